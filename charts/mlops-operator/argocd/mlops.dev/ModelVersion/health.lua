-- Argo CD health of a mlops.dev ModelVersion (Lua 5.1, as Argo CD runs it with gopher-lua).
-- Reads only status.observedGeneration, status.phase and the Ready and Validated
-- conditions; anything missing, unknown or of the wrong type reads as "not reported yet".
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
  hs.message = "Waiting for the operator to report the ModelVersion's status"
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
local validated = condition(status, "Validated")

if field(ready, "status") == "False" then
  -- InvalidSpec, ModelVersionNotFound: nothing changes until the spec or MLflow does.
  local reason = text(field(ready, "reason"))
  local prefixes = { InvalidSpec = "Invalid spec", ModelVersionNotFound = "Not found in MLflow" }
  hs.status = "Degraded"
  hs.message = with_message(prefixes[reason] or reason, ready)
  return hs
end

if status.phase == "Rejected" or field(validated, "status") == "False" then
  hs.status = "Degraded"
  hs.message = with_message("Failed validation", validated)
  return hs
end

if status.phase == "Validated" and field(validated, "status") == "True" then
  hs.status = "Healthy"
  local uri = text(status.uri)
  hs.message = with_message("Validated", validated)
  if uri ~= "" then
    hs.message = hs.message .. " (" .. uri .. ")"
  end
  return hs
end

if field(ready, "status") == "Unknown" then
  -- RegistryUnavailable: transient, the operator retries.
  hs.status = "Progressing"
  hs.message = with_message("Waiting for MLflow", ready)
  return hs
end

hs.status = "Progressing"
hs.message = "Waiting for the operator to check the gates"
return hs
