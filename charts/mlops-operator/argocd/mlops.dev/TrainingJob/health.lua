-- Argo CD health of a mlops.dev TrainingJob (Lua 5.1, as Argo CD runs it with gopher-lua).
-- Reads only status.observedGeneration, the Ready, Running and Failed conditions and
-- spec.suspend; anything missing, unknown or of the wrong type reads as "not reported yet".
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
  hs.message = "Waiting for the operator to report the TrainingJob's status"
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
local running = condition(status, "Running")
local failed = condition(status, "Failed")

if field(ready, "status") == "False" and field(ready, "reason") == "InvalidSpec" then
  hs.status = "Degraded"
  hs.message = with_message("Invalid spec", ready)
  return hs
end

if field(obj, "spec", "suspend") == true then
  hs.status = "Suspended"
  hs.message = "Suspended (spec.suspend): no new run starts"
  if field(failed, "status") == "True" then
    hs.message = hs.message .. "; the last run failed (" .. text(field(failed, "reason")) .. ")"
  end
  return hs
end

if field(running, "status") == "True" then
  hs.status = "Progressing"
  hs.message = with_message("Training", running)
  return hs
end

if field(failed, "status") == "True" then
  hs.status = "Degraded"
  hs.message = with_message("Last run failed (" .. text(field(failed, "reason")) .. ")", failed)
  return hs
end

if field(ready, "status") == "True" then
  hs.status = "Healthy"
  local latest = text(status.latestModelVersion)
  hs.message = "Last run succeeded"
  if latest ~= "" then
    hs.message = hs.message .. ": ModelVersion " .. latest
  end
  return hs
end

hs.status = "Progressing"
hs.message = with_message("Waiting for the first run to finish", running)
return hs
