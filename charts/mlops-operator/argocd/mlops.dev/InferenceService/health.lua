-- Argo CD health of a mlops.dev InferenceService (Lua 5.1, as Argo CD runs it with gopher-lua).
-- Reads only status.observedGeneration, status.rollout, status.stable and the Ready and
-- Degraded conditions; anything missing, unknown or of the wrong type reads as "not reported
-- yet". A rollback leaves the spec as it is in Git (the operator records it in status), so it
-- shows here as Degraded, never as OutOfSync.
local hs = {}

local function field(value, ...)
  for i = 1, select("#", ...) do
    if type(value) ~= "table" then
      return nil
    end
    value = value[select(i, ...)]
  end
  return value
end

local function text(value)
  if type(value) == "string" or type(value) == "number" then
    return tostring(value)
  end
  return ""
end

local function condition(status, wanted)
  local conditions = field(status, "conditions")
  if type(conditions) ~= "table" then
    return nil
  end
  for _, item in ipairs(conditions) do
    if type(item) == "table" and item.type == wanted then
      return item
    end
  end
  return nil
end

local function with_message(prefix, item)
  local message = text(field(item, "message"))
  if message == "" then
    return prefix
  end
  return prefix .. ": " .. message
end

local status = field(obj, "status")
if type(status) ~= "table" then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report the InferenceService's status"
  return hs
end

local generation = field(obj, "metadata", "generation")
local observed = status.observedGeneration
if type(generation) == "number" and (type(observed) ~= "number" or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to act on generation " .. text(generation)
  return hs
end

local ready = condition(status, "Ready")
local degraded = condition(status, "Degraded")
local rollout = field(status, "rollout")
local phase = text(field(rollout, "phase"))
local stable = text(field(status, "stable", "modelVersion"))
local candidate = text(field(rollout, "candidate"))
local target = text(field(rollout, "target"))

if field(ready, "status") == "False" and field(ready, "reason") == "InvalidSpec" then
  hs.status = "Degraded"
  hs.message = with_message("Invalid spec", ready)
  return hs
end

if phase == "Paused" then
  hs.status = "Suspended"
  hs.message = "Rollout of version " .. candidate .. " paused at " .. text(field(rollout, "canaryWeight"))
    .. "% (kubectl mlops resume)"
  return hs
end

-- An automatic or analysis rollback: the wanted version does not serve.
if field(degraded, "status") == "True" and field(degraded, "reason") == "RolledBack" then
  hs.status = "Degraded"
  hs.message = with_message("Rolled back to version " .. stable, degraded)
  return hs
end
if (phase == "RolledBack" or phase == "Failed") and target ~= "" and target ~= stable then
  hs.status = "Degraded"
  hs.message = "Version " .. target .. " was " .. (phase == "Failed" and "aborted" or "rolled back")
    .. "; version " .. stable .. " serves"
  local message = text(field(rollout, "message"))
  if message ~= "" then
    hs.message = hs.message .. ": " .. message
  end
  return hs
end

if phase == "Progressing" or phase == "Promoting" then
  hs.status = "Progressing"
  hs.message = "Rolling out version " .. candidate .. " (" .. phase .. ", " .. text(field(rollout, "canaryWeight"))
    .. "% of traffic)"
  local message = text(field(rollout, "message"))
  if message ~= "" then
    hs.message = hs.message .. ": " .. message
  end
  return hs
end

local ready_status = field(ready, "status")
local ready_reason = text(field(ready, "reason"))
if ready_status == "False" then
  if ready_reason == "Loading" then
    hs.status = "Progressing"
    hs.message = with_message("Waiting for a replica to serve", ready)
    return hs
  end
  if ready_reason == "NoValidatedVersion" then
    -- A TrainingJob still producing the first version: it comes by itself.
    hs.status = "Progressing"
    hs.message = with_message("Waiting for a validated version", ready)
    return hs
  end
  if ready_reason == "ScaledToZero" then
    hs.status = "Healthy"
    hs.message = with_message("Scaled to zero", ready)
    return hs
  end
  hs.status = "Degraded"
  hs.message = with_message("No replica serving (" .. ready_reason .. ")", ready)
  return hs
end

local progressing = condition(status, "Progressing")
if ready_status == "True" then
  if field(progressing, "status") == "False" and field(progressing, "reason") == "ModelVersionNotFound" then
    -- The spec pins a version that does not exist: the previous one keeps serving.
    hs.status = "Degraded"
    hs.message = with_message("Wanted version not found", progressing)
    return hs
  end
  if field(degraded, "status") == "True" and field(degraded, "reason") == "ReplicasUnavailable" then
    hs.status = "Progressing"
    hs.message = with_message("Serving with replicas unavailable", degraded)
    return hs
  end
  if field(degraded, "status") == "True" then
    local reason = text(field(degraded, "reason"))
    local prefixes = { AccuracyBelowThreshold = "Accuracy below threshold" }
    hs.status = "Degraded"
    hs.message = with_message(prefixes[reason] or reason, degraded)
    return hs
  end
  hs.status = "Healthy"
  hs.message = with_message("Serving", ready)
  return hs
end

hs.status = "Progressing"
hs.message = "Waiting for the operator to report the serving state"
return hs
