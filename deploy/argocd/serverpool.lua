-- Argo CD health check for Ferry's ServerPool (ferry.dev/v1alpha1): the pool's Ready
-- condition, set the same way in both modes (ferry_core::pool::ready_condition).
-- Healthy: every server ready; Degraded: a server cannot be scheduled or crash-loops, or a
-- model fits on no server; Progressing: servers starting.
local hs = {}
local status = obj.status
local generation = obj.metadata and obj.metadata.generation
if status == nil or (generation ~= nil
    and (status.observedGeneration == nil or status.observedGeneration < generation)) then
  hs.status = "Progressing"
  hs.message = "Waiting for Ferry to observe generation " .. tostring(generation or 1)
  return hs
end
local ready = nil
for _, c in ipairs(status.conditions or {}) do
  if c.type == "Ready" then
    ready = c
  end
end
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the pool's servers"
  return hs
end
local message = (ready.reason or "") .. ": " .. (ready.message or "")
if ready.status == "True" then
  for _, m in ipairs(status.models or {}) do
    if m.condition == "ModelTooLarge" or m.condition == "NotPlaced" then
      hs.status = "Degraded"
      hs.message = "InferenceService " .. tostring(m.service) .. ": " .. m.condition .. ": "
        .. (m.reason or "")
      return hs
    end
  end
  hs.status = "Healthy"
  hs.message = message
  return hs
end
if ready.reason == "Unschedulable" or ready.reason == "CrashLoopBackOff" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = message
return hs
