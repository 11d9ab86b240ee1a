-- Argo CD health check for TatorDeployment (tator.io/v1alpha1).
--
-- Reads only what the operator writes for automation: status.observedGeneration and the kstatus
-- conditions Ready, Reconciling and Stalled (never status.phase, which is for display).
--   Healthy      Ready=True and the current generation observed
--   Degraded     Stalled=True (a failed migration, a refused downgrade, a rollout past its
--                deadline, an invalid spec, an object the API server refused): progress needs a
--                person
--   Suspended    held on purpose: Paused=True (spec.paused) or Ready=False with reason Stopped
--                (spec.stopped); kstatus calls these Current (settled)
--   Progressing  anything else: no status yet, a generation not observed yet, Reconciling=True
-- Install it with the argocd-cm snippet in argocd-cm.yaml beside this file (docs/gitops.md).
local hs = {}

local function condition(conditions, type)
  for _, c in ipairs(conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c == nil then
    return ""
  end
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    if text ~= "" then
      text = text .. ": "
    end
    text = text .. c.message
  end
  return text
end

if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
    .. " (observed: " .. tostring(observed) .. ")"
  return hs
end

local conditions = obj.status.conditions
local ready = condition(conditions, "Ready")
local reconciling = condition(conditions, "Reconciling")
local stalled = condition(conditions, "Stalled")

-- A condition written for an older generation says nothing about this one.
local function current(c)
  return c ~= nil and (c.observedGeneration == nil or generation == nil or c.observedGeneration == generation)
end

if current(stalled) and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

local paused = condition(conditions, "Paused")
if current(paused) and paused.status == "True" then
  hs.status = "Suspended"
  hs.message = describe(paused)
  return hs
end
if current(ready) and ready.status == "False" and ready.reason == "Stopped" then
  hs.status = "Suspended"
  hs.message = describe(ready)
  return hs
end

if current(ready) and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end

hs.status = "Progressing"
if current(reconciling) and reconciling.status == "True" and ready ~= nil then
  hs.message = describe(reconciling) .. " (" .. (ready.message or "") .. ")"
elseif ready ~= nil then
  hs.message = describe(ready)
else
  hs.message = "Waiting for the Ready condition"
end
return hs
