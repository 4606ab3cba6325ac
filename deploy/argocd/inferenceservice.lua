-- Argo CD health check for Ferry's InferenceService (ferry.dev/v1alpha1).
-- Argo CD runs it with the live object as `obj` (gopher-lua, Lua 5.1) and reads hs.status:
-- Healthy, Progressing, Degraded or Suspended. Install: deploy/argocd/argocd-cm.yaml.
-- The failure reasons are ferry_core::reason's (a test keeps this list equal to them).
local failures = {
  NoReadyReplicas = true, CrashLoopBackOff = true, ModelNotReady = true,
  ModelFetchFailed = true, ProgressDeadlineExceeded = true, Unschedulable = true,
  FailedCreate = true, KEDAMissing = true, GatewayAPIMissing = true,
  RuntimeNotFound = true, UnsupportedModelFormat = true, NoRuntimeForFormat = true,
  ErrImagePull = true, ImagePullBackOff = true, InvalidImageName = true,
  CreateContainerConfigError = true, CreateContainerError = true,
  RolloutAborted = true, RolledBackAutomatically = true,
  PoolNotFound = true, NotPlaced = true, ModelTooLarge = true, InvalidSpec = true,
}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function said(c)
  if c == nil then
    return ""
  end
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local hs = {}
local status = obj.status
local generation = obj.metadata and obj.metadata.generation
if status == nil or (generation ~= nil
    and (status.observedGeneration == nil or status.observedGeneration < generation)) then
  hs.status = "Progressing"
  hs.message = "Waiting for Ferry to observe generation " .. tostring(generation or 1)
  return hs
end

local rollout = status.rollout
if rollout ~= nil and rollout.canaryRevision == status.latestRevision then
  local where = "revision " .. tostring(rollout.canaryRevision) .. " at step "
    .. tostring(rollout.step or 0) .. ", " .. tostring(rollout.weight or 0) .. "% of traffic"
  if rollout.phase == "Paused" then
    hs.status = "Suspended"
    hs.message = "Rollout paused: " .. where
    return hs
  end
  if rollout.phase == "WaitingForPromotion" then
    hs.status = "Suspended"
    hs.message = "Waiting for promotion: " .. where
    return hs
  end
  if rollout.phase == "Progressing" then
    hs.status = "Progressing"
    hs.message = "Canary " .. where
    return hs
  end
end

local ready = condition(status, "Ready")
local latest = condition(status, "LatestRevisionReady")
if latest ~= nil and latest.status == "False" and failures[latest.reason] then
  hs.status = "Degraded"
  hs.message = said(latest)
  return hs
end
if ready ~= nil and ready.status == "False" and failures[ready.reason] then
  hs.status = "Degraded"
  hs.message = said(ready)
  return hs
end
if ready ~= nil and ready.status == "True"
    and (latest == nil or latest.status == "True" or ready.reason == "ScaledToZero"
      or ready.reason == "ColdStart") then
  hs.status = "Healthy"
  hs.message = said(ready)
  return hs
end
hs.status = "Progressing"
hs.message = said(latest or ready)
if hs.message == "" then
  hs.message = "Waiting for the latest revision"
end
return hs
