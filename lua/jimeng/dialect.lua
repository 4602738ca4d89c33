--- Dialects: the shape a create's body takes for the gateway in front of the vendor.
--
-- tokenops  the vendor page's own shape (its API page): the body core.normalize builds, sent as it is.
-- new-api   the open-source gateway QuantumNous/new-api (and its forks), whose Jimeng channel reads only
--           the fields of its TaskSubmitReq and builds the vendor's payload from them. Every parameter the
--           user set travels where that gateway reads it, or the create is refused before it is sent.
-- auto      (the default) the vendor page's host (api.tokenops.ai) is tokenops; any other gateway is asked once
--           per base URL, with a free request before the first create, which of the two it is (identify).
--           An explicit tokenops is asked the same way off the vendor's host: a new-api gateway is refused.
--
-- The mappings below cite the new-api source they follow (files and functions of QuantumNous/new-api).
local errors = require "jimeng.errors"
local runtime = require "jimeng.runtime"

local M = {}

M.NAMES = { "tokenops", "new-api", "auto" }
local KNOWN = { tokenops = true, ["new-api"] = true, auto = true }

-- The made-up task id of the free identifying request (a status call): no task has it.
M.PROBE_ID = "jimeng-dialect-probe"

--- Checks a dialect name; -> name | nil, err (invalid_argument naming `field`).
function M.check(name, field)
  if KNOWN[name] then return name end
  return errors.invalid(("dialect must be one of %s; got %q"):format(table.concat(M.NAMES, ", "), tostring(name)),
    field or "dialect")
end

local function refuse(param, why)
  return errors.invalid(("%s cannot reach the vendor through the new-api dialect: %s; nothing was sent (use " ..
    "dialect tokenops for a gateway that speaks the vendor page's shape)"):format(param, why), param)
end

-- The fields core.normalize puts on a body, per kind: anything else came from strict=false (sent as given).
local VIDEO_FIELDS = { model = true, req_key = true, prompt = true, seed = true, frames = true, aspect_ratio = true,
  image_urls = true, content = true }
local OMNI_FIELDS = { model = true, req_key = true, prompt = true, seed = true, generation_type = true,
  content = true, mask_urls = true, output_resolution = true, pe_fast_mode = true }

local function stray_field(body, known)
  local names = {}
  for k in pairs(body) do
    if not known[k] then names[#names + 1] = tostring(k) end
  end
  table.sort(names)
  return names[1]
end

-- new-api, ordinary videos.
local function new_api_video(body)
  local stray = stray_field(body, VIDEO_FIELDS)
  if stray then
    -- relay/common/relay_info.go TaskSubmitReq: prompt, model, mode, image, images, size, duration, seconds,
    -- input_reference, metadata; relay/channel/task/jimeng/adaptor.go convertToRequestPayload overlays
    -- metadata onto requestPayload, which has no field for it: dropped by the gateway
    return refuse(stray, "the gateway's Jimeng payload (adaptor.go requestPayload) has no such field")
  end
  local prompt = body.prompt
  local urls, raw, mixed = {}, {}, false
  for _, u in ipairs(body.image_urls or {}) do urls[#urls + 1] = u end
  for _, item in ipairs(body.content or {}) do
    if item.type == "text" then
      prompt = item.text
    elseif item.type == "image_url" then
      urls[#urls + 1] = item.image_url.url
    elseif item.type == "image_base64" then
      -- convertToRequestPayload: images not starting with "http" become binary_data_base64, which the vendor
      -- takes as bare base64: the data URL's header goes
      raw[#raw + 1] = (item.image_url.url:gsub("^data:[^,]*;base64,", ""))
    end
  end
  if #urls > 0 and #raw > 0 then mixed = true end
  if mixed then
    -- convertToRequestPayload decides by Images[0] alone: all image_urls or all binary_data_base64
    return refuse("images", "the gateway sends all images as URLs or all as base64 (adaptor.go " ..
      "convertToRequestPayload looks at the first one): give both frames as URLs or both as local files")
  end
  local out = {
    model = body.model, -- the gateway routes by model (its channel's model list); upstream name from its mapping
    prompt = prompt, -- TaskSubmitReq.Prompt -> requestPayload.Prompt
    -- TaskSubmitReq.Duration: convertToRequestPayload maps 10 to frames 241, anything else to 121
    duration = body.frames == 241 and 10 or 5,
    -- convertToRequestPayload: taskcommon.UnmarshalMetadata(req.Metadata, &r) overlays these onto the vendor's
    -- payload; without them the vendor gets seed 0 (a fixed seed) and aspect_ratio "" (requestPayload's zero values)
    metadata = { req_key = body.req_key, seed = body.seed, aspect_ratio = body.aspect_ratio, frames = body.frames },
  }
  if #urls > 0 then
    out.images = urls -- TaskSubmitReq.Images -> requestPayload.ImageUrls (HasPrefix "http")
  elseif #raw > 0 then
    out.images = raw -- -> requestPayload.BinaryDataBase64
  end
  return out
end

-- new-api, OmniHuman (relay/channel/task/jimeng/omnihuman.go, isOmniHumanModel: req_key
-- jimeng_realman_avatar_picture_omni_v15). The portrait and the audio travel as metadata.image_url and
-- metadata.audio_url (tryConvertOmniHumanFilesToURLs writes them there; resolveOmniHumanBillingSeconds reads
-- them back from the payload's ImageURL / AudioURL); content[] is not a field of TaskSubmitReq.
local function new_api_omni(body, params)
  local stray = stray_field(body, OMNI_FIELDS)
  if stray then return refuse(stray, "the gateway's TaskSubmitReq has no such field") end
  -- Not in the source read (the payload struct with ImageURL/AudioURL was not readable): whether the gateway
  -- carries mask_urls, output_resolution or pe_fast_mode. Refused rather than guessed.
  if body.mask_urls then
    return refuse("mask", "no mask field is known in the gateway's OmniHuman payload (omnihuman.go)")
  end
  for _, k in ipairs { "output_resolution", "resolution" } do
    if params[k] ~= nil then
      return refuse(k, "no output_resolution field is known in the gateway's OmniHuman payload (omnihuman.go); " ..
        "leave it out for the vendor's default, 1080")
    end
  end
  for _, k in ipairs { "pe_fast_mode", "fast" } do
    if params[k] ~= nil then
      return refuse(k, "no pe_fast_mode field is known in the gateway's OmniHuman payload (omnihuman.go)")
    end
  end
  if type(body.prompt) ~= "string" or not body.prompt:find("%S") then
    -- relay/common ValidateBasicTaskRequest -> validatePrompt: 400 "prompt is required", for every task
    return errors.invalid("the new-api dialect needs a prompt, OmniHuman too: a new-api gateway refuses any task " ..
      "without one (ValidateBasicTaskRequest); give one, e.g. \"speak naturally\"; nothing was sent", "prompt")
  end
  local image, audio
  for _, item in ipairs(body.content) do
    if item.type == "image_url" then image = item.image_url.url end
    if item.type == "audio_url" then audio = item.audio_url.url end
  end
  return {
    model = body.model,
    prompt = body.prompt,
    metadata = { req_key = body.req_key, image_url = image, audio_url = audio, seed = body.seed },
  }
end

--- The body to send for `body` (core.normalize's, the vendor page's shape) in dialect `name`; params: what
-- the user gave (to tell a value set from a default). -> body | nil, err (invalid_argument: nothing sent)
function M.shape(name, body, params)
  if name ~= "new-api" then return body end
  if body.generation_type == "omni_human" then return new_api_omni(body, params or {}) end
  return new_api_video(body)
end

--- Whether a call other than the video routes exists in the dialect. -> true | nil, err
function M.subject_route(name, which)
  if name ~= "new-api" then return true end
  -- router/video-router.go (SetVideoRouter): /v1/video/generations, /v1/videos, /v1/videos/:task_id,
  -- /v1/videos/:task_id/content; no /v1/omnihuman/subject/* route
  return errors.invalid(("subject %s is not a route of new-api gateways (router/video-router.go has no " ..
    "/omnihuman/subject/%s): nothing was sent; give the mask URL yourself with the tokenops dialect"):format(which,
    which), which)
end

-- What each base URL was found to be, by identify (one free request per base URL for the process).
local known = {}

--- Which gateway family answers at the client's base URL, from a free status call for a made-up id:
-- new-api sets X-New-Api-Version on every answer (middleware PoweredBy / Version) and X-Oneapi-Request-Id
-- (middleware/request-id.go), and answers an unknown task with 400 {"code":"task_not_exist"}
-- (relay/relay_task.go). -> {family=, dialect=, evidence=, status=} | nil, err (the request failed)
function M.identify(client)
  local http = require "jimeng.http"
  local r
  if client.closed then -- client:close(): a typed error, as every call of a closed client returns, never a raise
    return nil, errors.new { kind = "interrupted", created = false, retryable = false,
      message = "the client was closed (client:close()) before anything was sent" }
  end
  local attempt = 0
  while true do -- a free call: network faults are retried as a status call's are
    local url = client.base_url .. "/videos/" .. M.PROBE_ID
    local t, why, class = client.engine:request { url = url, method = "GET", timeout = client.timeout,
      head = client.trace ~= nil }
    if not t then return nil, errors.from_core(why, class) end
    local _, interrupted = runtime.await(client.engine, t)
    if interrupted then
      t:cancel()
      return nil, errors.new { kind = "interrupted", created = false,
        message = ("interrupted (%s) while asking the gateway which it is"):format(interrupted) }
    end
    r = t:result()
    local ok = r.ok and r.status and r.status > 0
    local err = not ok and http.transport_error(r, nil, client)
    if client.trace then -- -v shows this free call as it shows every other
      require("jimeng.trace").request(client, { method = "GET", url = url, what = "identify" }, r, attempt,
        http.request_id(r), err or nil)
    end
    if ok then break end
    if not err.retryable or attempt >= client.max_retries then
      err.message = "cannot ask the gateway which it is (nothing was sent to be paid for): " .. err.message
      return nil, err
    end
    attempt = attempt + 1
    local delay = http.backoff(attempt - 1)
    client:log("retry", "identify", attempt, delay, tostring(err))
    require("jimeng.trace").retry(client, "identify", attempt, delay, err.message)
    local stopped = runtime.sleep(delay)
    if stopped then
      return nil, errors.new { kind = "interrupted", created = false,
        message = ("interrupted (%s) while asking the gateway which it is"):format(stopped) }
    end
  end
  local h = r.headers or {}
  local ok, decoded = pcall(client.json.decode, r.body or "")
  local code = ok and type(decoded) == "table" and decoded.code
  if h["x-new-api-version"] then
    return { family = "new-api", dialect = "new-api", status = r.status,
      evidence = "X-New-Api-Version: " .. errors.scrub(h["x-new-api-version"], client.api_key) }
  elseif h["x-oneapi-request-id"] then
    return { family = "new-api", dialect = "new-api", status = r.status, evidence = "X-Oneapi-Request-Id header" }
  elseif code == "task_not_exist" then
    return { family = "new-api", dialect = "new-api", status = r.status,
      evidence = 'an unknown task answered {"code":"task_not_exist"}' }
  end
  return { family = "tokenops", dialect = "tokenops", status = r.status,
    evidence = ("no new-api header or error shape (HTTP %d for an unknown task)"):format(r.status) }
end

-- The vendor page's own host: it speaks the page's shape by definition, and is never asked.
local VENDOR_HOSTS = { ["api.tokenops.ai"] = true }

--- Whether the client's base URL is the vendor page's own host.
function M.vendor_host(client)
  return VENDOR_HOSTS[(client.base_host or ""):lower()] == true
end

-- What the gateway at the client's base URL is: asked once per base URL (per process). -> found | nil, err
local function lookup(client)
  local found = known[client.base_url]
  if not found then
    local err
    found, err = M.identify(client)
    if not found then
      err.created = false
      return nil, err
    end
    known[client.base_url] = found
  end
  return found
end

-- The explicit tokenops dialect in front of a new-api gateway: that gateway reads only its own fields, and the
-- vendor would get seed 0, no aspect ratio, 121 frames and no image. Refused before anything is sent.
local function mismatch(client, evidence)
  return errors.invalid(("the gateway at %s is a new-api gateway (%s): it reads the new-api dialect and would " ..
    "drop the tokenops dialect's seed, aspect ratio, frames and images; nothing was sent; use --dialect new-api " ..
    "(JIMENG_DIALECT=new-api, dialect=\"new-api\") or auto"):format(client.base_url, evidence), "dialect")
end

--- The client's dialect, resolved: auto takes the vendor page's host for tokenops, and asks any other
-- gateway once per base URL (per process). An explicit tokenops is asked the same way (off the vendor's host),
-- and refused in front of a new-api gateway, or after a create's answer showed one. -> name | nil, err
function M.resolve(client)
  if client.dialect == "new-api" then return client.dialect end
  if M.vendor_host(client) then return "tokenops" end
  if client.dialect == "tokenops" and client.answered_new_api then
    return mismatch(client, client.answered_new_api)
  end
  local found, err = lookup(client)
  if not found then return nil, err end
  if client.dialect == "tokenops" and found.family == "new-api" then return mismatch(client, found.evidence) end
  return found.dialect
end

--- For checks before anything is paid (a batch's jobs, an experiment's cells): whether body can travel in
-- the client's dialect, when it is known without asking (auto not yet resolved: the create checks it).
-- -> true | nil, err (invalid_argument)
function M.precheck(client, body, params)
  local name = client.dialect
  if name == "tokenops" and not M.vendor_host(client) then
    local found = known[client.base_url]
    if client.answered_new_api then return mismatch(client, client.answered_new_api) end
    if found and found.family == "new-api" then return mismatch(client, found.evidence) end
  end
  if name == "auto" then
    name = M.vendor_host(client) and "tokenops" or (known[client.base_url] and known[client.base_url].dialect)
  end
  if not name then return true end
  local shaped, err = M.shape(name, body, params)
  if not shaped then return nil, err end
  return true
end

return M
