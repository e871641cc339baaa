-- Argo CD health of a MultimodalDeployment (triptych.dev), from its kstatus conditions.
-- Install: argocd-cm key `resource.customizations.health.triptych.dev_MultimodalDeployment` = this file.
-- Order follows kstatus: not yet observed -> Progressing; Stalled=True -> Degraded;
-- Reconciling=True -> Progressing; Ready=True -> Healthy; anything else -> Progressing.
local hs = {}
if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Terminating"
  local finalizers = obj.metadata.finalizers
  if finalizers ~= nil and #finalizers > 0 then
    -- e.g. foregroundDeletion while the children go, when Argo CD prunes it
    hs.message = "Terminating; waiting for finalizers: " .. table.concat(finalizers, ", ")
  end
  -- Argo CD (v3.6) shows a terminating object's deletionMessage, and its own text where there is none.
  hs.deletionMessage = hs.message
  return hs
end
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end
local generation = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local conditions = {}
for _, condition in ipairs(obj.status.conditions) do
  conditions[condition.type] = condition
end
local function text(condition)
  if condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  return condition.reason or ""
end
local stalled, reconciling, ready = conditions["Stalled"], conditions["Reconciling"], conditions["Ready"]
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = text(stalled)
elseif reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = text(reconciling)
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = text(ready)
else
  hs.status = "Progressing"
  hs.message = ready ~= nil and text(ready) or "Waiting for the Ready condition"
end
return hs
