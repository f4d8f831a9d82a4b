"""Which container images the sandbox can "run", and what running them means locally.

There is no container engine in the sandbox: an image is a name for a known local entry point.
Our own images (``ghcr.io/mlops-operator/{operator,trainer,server}``, any tag) are this very
package, so their default entry point is the ``mlops-operator`` command of the current venv.
``python:<tag>`` images run the current interpreter. Anything else cannot be pulled, and the pod
shows ``ErrImagePull`` then ``ImagePullBackOff``, as on a cluster whose registry lacks the image.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Sequence

from mlops_operator.config import IMAGE_REGISTRY

OUR_COMPONENTS = ("operator", "trainer", "server")
# Names as users write them; the tag is ignored (the sandbox runs the installed version).
KNOWN_IMAGES = [*(f"{IMAGE_REGISTRY}/{component}:<tag>" for component in OUR_COMPONENTS), "python:<tag>"]

_PYTHON_IMAGE = re.compile(
    r"^(?:(?:docker\.io|index\.docker\.io)/)?(?:library/)?python(?::[\w.\-]+)?(?:@sha256:[0-9a-f]+)?$"
)
_OUR_IMAGE = re.compile(
    rf"^{re.escape(IMAGE_REGISTRY)}/(?P<component>{'|'.join(OUR_COMPONENTS)})(?::[\w.\-]+)?(?:@sha256:[0-9a-f]+)?$"
)
# The interpreter names a python image has on its PATH; all of them mean "this venv's python".
_PYTHON_NAMES = {"python", "python3", f"python3.{sys.version_info.minor}"}


@dataclasses.dataclass(frozen=True)
class LocalImage:
    """What an image provides: its default entry point/arguments and environment."""

    name: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    own: bool = False  # one of this project's images


class ImageNotAvailable(Exception):
    """The image cannot run in the sandbox: the pod gets ErrImagePull with this message."""


def bin_dir() -> str:
    """The venv's bin directory: first on every pod's PATH, so ``mlops-operator`` and ``python`` resolve to it."""
    return os.path.dirname(sys.executable)


def resolve_image(image: str) -> LocalImage:
    """Map an image reference to its local equivalent, or raise ImageNotAvailable."""
    path = f"{bin_dir()}{os.pathsep}{os.environ.get('PATH', '/usr/local/bin:/usr/bin:/bin')}"
    # Like the official images' ENV: unbuffered output makes the pod's log readable while it runs.
    common = (("PATH", path), ("LANG", "C.UTF-8"), ("PYTHONUNBUFFERED", "1"))
    match = _OUR_IMAGE.match(image or "")
    if match:
        return LocalImage(name=image, entrypoint=("mlops-operator",), cmd=(), env=common, own=True)
    if _PYTHON_IMAGE.match(image or ""):
        return LocalImage(name=image, entrypoint=(), cmd=("python3",), env=common)
    raise ImageNotAvailable(
        f'image "{image}" is not available in the sandbox; known images: {", ".join(KNOWN_IMAGES)}'
    )


def container_argv(image: LocalImage, command: Sequence[str] | None, args: Sequence[str] | None) -> list[str]:
    """Docker/Kubernetes rules: ``command`` replaces ENTRYPOINT (and drops CMD), ``args`` replaces CMD."""
    argv = [*command, *(args or [])] if command else [*image.entrypoint, *(args if args else image.cmd)]
    if argv and argv[0] in _PYTHON_NAMES:
        argv[0] = sys.executable
    return argv
