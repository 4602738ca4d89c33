--- The gallery of an experiment: one self-contained index.html (inline CSS and JS, no network, opens from
-- disk) and results.json with the same data. A grid with one axis as rows and one as columns (one grid
-- per value of any other axis), each take a looping muted video with its poster, its varying parameters,
-- status, generation time, task id, error, and buttons copying its parameters as JSON and as a
-- `jimeng generate` command. While the run is live, the page reloads itself every few seconds.
local batch = require "jimeng.batch"

local M = {}

--- A JSON text with object keys sorted, so that equal values give equal texts (batch's, with "/" left
-- unescaped: lua-cjson writes it as "\/", valid, but not what a person pastes).
function M.canonical(json, v)
  return batch.canonical(json, v, function(x) return (json.encode(x):gsub("\\/", "/")) end)
end

local ESC = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }

--- Escapes text for HTML content and attribute values.
local function esc(s)
  return (tostring(s):gsub("[&<>\"']", ESC))
end
M.escape = esc

local function show(v, canonical)
  if type(v) == "string" then return v end
  if type(v) == "table" then return canonical(v) end
  return tostring(v)
end

local STATUS_WORDS = { pending = "waiting", in_queue = "in queue", processing = "processing", completed = "downloading",
  saved = "done", failed = "failed", unknown = "unknown outcome", error = "error",
  interrupted = "interrupted: run again" }

--- The gallery's data (also results.json): plain values only.
-- opts: live, rows, cols, report, canonical(v) -> text, json.
function M.data(plan, takes, opts)
  local canonical = opts.canonical
  local axes, by_name = {}, {}
  for i, a in ipairs(plan.axes) do
    axes[i] = { name = a.name, values = a.values, var = a.var or false }
    by_name[a.name] = axes[i]
  end
  -- rows and columns: as asked, else the first two axes (one axis alone makes the columns)
  local rows, cols = opts.rows, opts.cols
  local free = {}
  for _, a in ipairs(axes) do if a.name ~= rows and a.name ~= cols then free[#free + 1] = a.name end end
  if not cols and not rows then
    if #free >= 2 then rows, cols = table.remove(free, 1), table.remove(free, 1) else cols = table.remove(free, 1) end
  elseif not cols then
    cols = table.remove(free, 1)
  elseif not rows and #free > 0 then
    rows = table.remove(free, 1)
  end

  local counts = { cells = #plan.cells, takes = #takes, saved = 0, failed = 0, waiting = 0, other = 0 }
  local cells = {}
  for i, t in ipairs(takes) do
    local c = t.cell
    local varying = {}
    for _, k in ipairs(plan.varying) do
      -- a grid cell's axis values are its chips; an extra cell shows every parameter it does not share
      local shown = c.extra and c.axes[k] == nil or not (by_name[k] or (k == "prompt" and plan.template))
      if c.params[k] ~= nil and shown then varying[k] = c.params[k] end
    end
    cells[i] = {
      id = c.id, label = t.label, take = t.take, extra = c.extra or false, axes = c.axes, varying = varying,
      params = c.params, prompt = c.params.prompt, seconds = c.seconds, status = t.status, task_id = t.task_id,
      video = t.status == "saved" and t.video or nil, poster = t.status == "saved" and t.has_poster and t.poster or nil,
      duration = t.status == "saved" and t.duration or nil, generation_seconds = t.generation_seconds,
      error = t.error, command = t.command,
    }
    if t.status == "saved" then counts.saved = counts.saved + 1
    elseif t.status == "failed" then counts.failed = counts.failed + 1
    elseif t.status == "pending" or t.status == "in_queue" or t.status == "processing" or t.status == "completed" then
      counts.waiting = counts.waiting + 1
    else counts.other = counts.other + 1 end
  end
  local shared = {}
  for k, v in pairs(plan.shared) do
    if not (k == "prompt" and plan.template) then shared[k] = show(v, canonical) end
  end
  local report = opts.report or {}
  return {
    name = plan.name, live = opts.live and true or false, updated_at = os.date("!%Y-%m-%dT%H:%M:%SZ"),
    axes = axes, rows = rows, cols = cols, pages = free, shared = shared, template = plan.template,
    prompt_varies = (function()
      for _, k in ipairs(plan.varying) do if k == "prompt" then return true end end
      return false
    end)(),
    counts = counts, paid = report.paid or 0, paid_seconds = report.paid_seconds or 0, cells = cells,
  }
end

--- results.json: the gallery's data, keys sorted.
function M.results_json(data, json)
  local out = {}
  for k, v in pairs(data) do out[k] = v end
  out.prompt_varies = nil
  return M.canonical(json, out) .. "\n"
end

local CSS = [[
:root{color-scheme:light dark;--bg:#f4f4f2;--fg:#1d1d1f;--muted:#6b6b70;--card:#fff;--line:#deddda;--chip:#ecebe8;
--ok:#2f7d4f;--bad:#b3261e;--wait:#8a6d1d;--accent:#3a5ccc}
@media (prefers-color-scheme:dark){:root{--bg:#161618;--fg:#ececec;--muted:#9a9aa0;--card:#212124;--line:#333337;
--chip:#2c2c30;--ok:#5cc98a;--bad:#ff8a80;--wait:#e0c060;--accent:#8ea8ff}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",
"Noto Sans CJK SC",sans-serif}
header{padding:24px 32px 8px}
h1{font-size:22px;margin:0 0 6px;font-weight:650;letter-spacing:-.01em}
h2{font-size:15px;margin:28px 0 10px;font-weight:600;color:var(--muted)}
.sub{color:var(--muted);margin:0 0 12px}
.live{display:inline-block;margin-left:10px;padding:1px 8px;border-radius:10px;font-size:12px;vertical-align:middle;
background:var(--wait);color:var(--bg)}
.chips{display:flex;flex-wrap:wrap;gap:6px;margin:8px 0}
.chip{background:var(--chip);border-radius:6px;padding:2px 8px;font-size:12.5px;max-width:100%;overflow-wrap:anywhere}
.chip b{font-weight:600;color:var(--muted);margin-right:4px}
.template{font-size:13px;color:var(--muted);margin:6px 0}
.template code{color:var(--fg)}
main{padding:0 32px 40px}
.grid{display:grid;gap:14px;align-items:start}
.corner,.colhead,.rowhead{font-size:12.5px;color:var(--muted);overflow-wrap:anywhere}
.colhead{padding:0 2px;font-weight:600;color:var(--fg)}
.rowhead{font-weight:600;color:var(--fg);padding-top:6px;display:-webkit-box;-webkit-line-clamp:6;-webkit-box-orient:vertical;
overflow:hidden}
.axisname{display:block;font-weight:500;color:var(--muted);font-size:11px;text-transform:uppercase;letter-spacing:.04em}
.slot{display:flex;gap:10px;flex-wrap:wrap}
.slot>.card{flex:1 1 200px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;overflow:hidden;min-width:0}
.media{position:relative;aspect-ratio:16/9;background:linear-gradient(135deg,var(--chip),var(--line));display:flex;
align-items:center;justify-content:center}
.media video{width:100%;height:100%;object-fit:contain;background:#000;display:block}
.media .ph{color:var(--muted);font-size:13px;text-align:center;padding:8px}
.take{position:absolute;top:6px;left:6px;background:rgba(0,0,0,.6);color:#fff;font-size:11px;padding:1px 6px;border-radius:4px}
.meta{padding:8px 10px 10px}
.vals{display:flex;flex-wrap:wrap;gap:4px;margin-bottom:6px}
.prompt{margin:0 0 6px;font-size:12.5px;overflow-wrap:anywhere}
.facts{font-size:12px;color:var(--muted);display:flex;flex-wrap:wrap;gap:2px 10px}
.status{font-weight:600}
.s-saved .status{color:var(--ok)}.s-failed .status,.s-error .status,.s-unknown .status{color:var(--bad)}
.s-interrupted .status,.s-pending .status,.s-in_queue .status,.s-processing .status,.s-completed .status{color:var(--wait)}
.task{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:11px;overflow-wrap:anywhere}
.error{color:var(--bad);font-size:12.5px;margin:6px 0 0;overflow-wrap:anywhere}
.actions{display:flex;gap:6px;margin-top:8px}
button{font:inherit;font-size:12px;padding:3px 9px;border-radius:6px;border:1px solid var(--line);background:var(--chip);
color:var(--fg);cursor:pointer}
button:hover{border-color:var(--accent)}
textarea.copybox{width:100%;margin-top:6px;font:11px ui-monospace,monospace;background:var(--bg);color:var(--fg);
border:1px solid var(--line);border-radius:6px}
footer{color:var(--muted);font-size:12px;padding:0 32px 24px}
]]

local JS = [[
(function () {
  "use strict";
  function fallbackCopy(text) {
    var ta = document.createElement("textarea");
    ta.value = text;
    ta.setAttribute("readonly", "");
    ta.style.position = "fixed";
    ta.style.opacity = "0";
    document.body.appendChild(ta);
    ta.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    document.body.removeChild(ta);
    return ok;
  }
  function done(btn, text, ok) {
    var label = btn.getAttribute("data-text") || btn.textContent;
    btn.setAttribute("data-text", label);
    btn.textContent = ok ? "Copied" : "Select and copy below";
    setTimeout(function () { btn.textContent = label; }, 1600);
    if (!ok) {
      var meta = btn.closest(".meta");
      var box = meta.querySelector("textarea.copybox") || document.createElement("textarea");
      box.className = "copybox";
      box.readOnly = true;
      box.rows = 3;
      box.value = text;
      meta.appendChild(box);
      box.select();
    }
  }
  // Copies the button's text (the cell's parameters as JSON, or its command) and returns it; without a
  // clipboard (a page from disk in some browsers, a headless one) it falls back, and at worst shows it.
  function copyText(btn) {
    var text = btn.getAttribute("data-copy") || "";
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(function () { done(btn, text, true); },
        function () { done(btn, text, fallbackCopy(text)); });
    } else {
      done(btn, text, fallbackCopy(text));
    }
    return text;
  }
  window.jimengGallery = { copyText: copyText };
  document.addEventListener("click", function (e) {
    var btn = e.target.closest && e.target.closest("button[data-copy]");
    if (btn) copyText(btn);
  });
  // the length shown is the file's own, as the browser reads it
  Array.prototype.forEach.call(document.querySelectorAll("video"), function (v) {
    function showDuration() {
      var d = v.closest(".card").querySelector(".dur");
      if (d && isFinite(v.duration)) d.textContent = v.duration.toFixed(1) + " s video";
    }
    if (v.readyState >= 1) showDuration();
    v.addEventListener("loadedmetadata", showDuration);
  });
  var y = null;
  try { y = sessionStorage.getItem("jimeng-scroll"); sessionStorage.removeItem("jimeng-scroll"); } catch (e) { y = null; }
  if (y !== null) window.scrollTo(0, Number(y));
  if (document.body.getAttribute("data-live") === "1") {
    setTimeout(function () {
      try { sessionStorage.setItem("jimeng-scroll", String(window.scrollY)); } catch (e) { /* no storage: top */ }
      location.reload();
    }, 3000);
  }
})();
]]

local function seconds_text(s)
  if s < 90 then return ("%.1f s"):format(s) end
  return ("%d min %02d s"):format(math.floor(s / 60), math.floor(s % 60))
end

local function chip(k, v)
  return ('<span class="chip"><b>%s</b>%s</span>'):format(esc(k), esc(v))
end

local function card(c, data, canonical)
  local out = {}
  local function add(s) out[#out + 1] = s end
  add(('<article class="card s-%s" data-label="%s" data-status="%s"%s%s>'):format(esc(c.status), esc(c.label),
    esc(c.status), c.seconds and (' data-seconds="%d"'):format(c.seconds) or "",
    c.duration and (' data-duration="%.3f"'):format(c.duration) or ""))
  add('<div class="media">')
  if c.video then
    add(('<video src="%s"%s muted loop autoplay playsinline preload="metadata" title="%s"></video>'):format(
      esc(c.video), c.poster and (' poster="%s"'):format(esc(c.poster)) or "", esc(c.label)))
  else
    add(('<div class="ph">%s</div>'):format(esc(STATUS_WORDS[c.status] or c.status)))
  end
  if c.take > 1 then add(('<span class="take">take %d</span>'):format(c.take)) end
  add('</div><div class="meta"><div class="vals">')
  for _, a in ipairs(data.axes) do
    if c.axes[a.name] ~= nil then add(chip(a.name, show(c.axes[a.name], canonical))) end
  end
  local keys = {}
  for k in pairs(c.varying) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    if k ~= "prompt" then add(chip(k, show(c.varying[k], canonical))) end
  end
  if c.extra then add(chip("cell", c.id)) end
  add("</div>")
  if data.prompt_varies and c.prompt and c.axes.prompt == nil then add(('<p class="prompt">%s</p>'):format(esc(c.prompt))) end
  add('<div class="facts">')
  add(('<span class="status">%s</span>'):format(esc(STATUS_WORDS[c.status] or c.status)))
  if c.duration then add(('<span class="dur">%.1f s video</span>'):format(c.duration)) end
  if c.generation_seconds then add(("<span>made in %s</span>"):format(seconds_text(c.generation_seconds))) end
  if c.task_id then add(('<span class="task" title="task id">%s</span>'):format(esc(c.task_id))) end
  add("</div>")
  if c.error then
    add(('<p class="error">%s</p>'):format(esc(c.error.message or c.error.kind or "error")))
  end
  add('<div class="actions">')
  add(('<button type="button" class="copy-json" data-copy="%s">Copy JSON</button>'):format(esc(canonical(c.params))))
  if c.command then
    add(('<button type="button" class="copy-cmd" data-copy="%s">Copy command</button>'):format(esc(c.command)))
  end
  add("</div></div></article>")
  return table.concat(out)
end

--- The page itself.
function M.html(data, json)
  local canonical = function(v) return M.canonical(json, v) end
  local out = {}
  local function add(s) out[#out + 1] = s end
  add('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">')
  add('<meta name="viewport" content="width=device-width,initial-scale=1">')
  if data.live then add('<noscript><meta http-equiv="refresh" content="5"></noscript>') end
  add(("<title>%s · jimeng experiment</title>"):format(esc(data.name)))
  add("<style>" .. CSS .. "</style></head>")
  add(('<body data-live="%s"><header>'):format(data.live and "1" or "0"))
  add(("<h1>%s%s</h1>"):format(esc(data.name), data.live and '<span class="live">running: reloads itself</span>' or ""))
  local n = data.counts
  add(('<p class="sub">%d cells, %d videos: %d done, %d failed, %d waiting%s · this run paid for %d videos (%d s) · %s</p>')
    :format(n.cells, n.takes, n.saved, n.failed, n.waiting, n.other > 0 and (", " .. n.other .. " other") or "",
      data.paid, data.paid_seconds, esc(data.updated_at)))
  if data.template then
    add(('<p class="template">prompt template: <code>%s</code></p>'):format(esc(data.template)))
  end
  local shared = {}
  for k in pairs(data.shared) do shared[#shared + 1] = k end
  table.sort(shared)
  if #shared > 0 then
    add('<div class="chips">')
    for _, k in ipairs(shared) do add(chip(k, data.shared[k])) end
    add("</div>")
  end
  add("</header><main>")

  local by_name = {}
  for _, a in ipairs(data.axes) do by_name[a.name] = a end
  local rows = data.rows and by_name[data.rows] or { name = nil, values = { false } }
  local cols = data.cols and by_name[data.cols] or { name = nil, values = { false } }
  local function same(a, b) return canonical(a) == canonical(b) end
  local function matches(c, fixed)
    for k, v in pairs(fixed) do
      if c.axes[k] == nil or not same(c.axes[k], v) then return false end
    end
    return true
  end

  -- one grid per combination of the axes that are neither rows nor columns
  local pages = { {} }
  for _, name in ipairs(data.pages) do
    local next_pages = {}
    for _, p in ipairs(pages) do
      for _, v in ipairs(by_name[name].values) do
        local q = {}
        for k, pv in pairs(p) do q[k] = pv end
        q[name] = v
        next_pages[#next_pages + 1] = q
      end
    end
    pages = next_pages
  end
  local has_grid = false
  for _, c in ipairs(data.cells) do has_grid = has_grid or not c.extra end
  if has_grid then
    for _, page in ipairs(pages) do
      if #data.pages > 0 then
        local title = {}
        for _, name in ipairs(data.pages) do title[#title + 1] = name .. " = " .. show(page[name], canonical) end
        add(("<h2>%s</h2>"):format(esc(table.concat(title, " · "))))
      end
      local with_rows = rows.name ~= nil
      add(('<section class="grid" style="grid-template-columns:%srepeat(%d,minmax(220px,360px))">'):format(
        with_rows and "minmax(90px,160px) " or "", #cols.values))
      if cols.name then
        if with_rows then
          add(('<div class="corner">%s ↓ · %s →</div>'):format(esc(rows.name), esc(cols.name)))
        end
        for _, v in ipairs(cols.values) do
          add(('<div class="colhead"><span class="axisname">%s</span>%s</div>'):format(esc(cols.name), esc(show(v, canonical))))
        end
      end
      for _, rv in ipairs(rows.values) do
        if with_rows then
          add(('<div class="rowhead"><span class="axisname">%s</span>%s</div>'):format(esc(rows.name), esc(show(rv, canonical))))
        end
        for _, cv in ipairs(cols.values) do
          local fixed = {}
          for k, v in pairs(page) do fixed[k] = v end
          if rows.name then fixed[rows.name] = rv end
          if cols.name then fixed[cols.name] = cv end
          add('<div class="slot">')
          for _, c in ipairs(data.cells) do
            if not c.extra and matches(c, fixed) then add(card(c, data, canonical)) end
          end
          add("</div>")
        end
      end
      add("</section>")
    end
  end
  local extras = {}
  for _, c in ipairs(data.cells) do if c.extra then extras[#extras + 1] = c end end
  if #extras > 0 then
    add("<h2>Extra cells</h2>")
    add('<section class="grid" style="grid-template-columns:repeat(auto-fill,minmax(240px,1fr))">')
    for _, c in ipairs(extras) do add('<div class="slot">' .. card(c, data, canonical) .. "</div>") end
    add("</section>")
  end
  add(('</main><footer>jimeng experiment · results.json beside this page holds the same data%s</footer>'):format(
    data.live and " · the run is going on: this page reloads every 3 s" or ""))
  add("<script>" .. JS .. "</script></body></html>\n")
  return table.concat(out)
end

return M
