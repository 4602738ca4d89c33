-- A private CA made with openssl, certificates signed by it (good, expired, wrong host), and Debian's nginx as
-- a TLS + HTTP/2 front that proxies /v1/ to a sandbox: the real programs a user would put in front of the API.
local h = require "spec.support.helpers"
local proc = require "spec.support.process"
local core = require "jimeng.core"

local M = {}

M.available = proc.run("command -v nginx && command -v openssl && nginx -V 2>&1 | grep -q http_v2_module")

local function sh(cmd)
  local ok, out = proc.run(cmd)
  assert(ok, cmd .. "\n" .. out)
  return out
end

--- Makes dir/ca.pem and, for each name in certs ({good = {san=...}, expired = {san=..., past=true}}),
-- dir/NAME.pem and dir/NAME.key. Returns dir.
function M.make_ca(dir, certs)
  sh(("cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key " ..
    "-out ca.pem -days 3650 -subj '/CN=jimeng test CA'"):format(dir))
  -- `openssl ca` (not `openssl x509 -days`, which cannot go back in time) to date a certificate in the past
  h.write(dir .. "/ca.cnf", table.concat({
    "[ ca ]", "default_ca = test", "[ test ]", "dir = " .. dir, "database = $dir/index.txt",
    "new_certs_dir = $dir", "serial = $dir/serial", "certificate = $dir/ca.pem", "private_key = $dir/ca.key",
    "default_md = sha256", "policy = any", "copy_extensions = none", "unique_subject = no",
    "[ any ]", "commonName = supplied", "",
  }, "\n"))
  h.write(dir .. "/index.txt", "")
  h.write(dir .. "/serial", "1000\n")
  for name, c in pairs(certs) do
    h.write(dir .. "/" .. name .. ".ext", "subjectAltName = " .. c.san .. "\nbasicConstraints = CA:FALSE\n" ..
      "extendedKeyUsage = serverAuth\n")
    sh(("cd %s && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout %s.key -out %s.csr " ..
      "-subj '/CN=%s'"):format(dir, name, name, c.cn or name))
    local dates = c.past and "-startdate 20200101000000Z -enddate 20210102030405Z" or "-days 30"
    sh(("cd %s && openssl ca -batch -notext -config ca.cnf %s -extfile %s.ext -in %s.csr -out %s.pem")
      :format(dir, dates, name, name, name))
  end
  return dir
end

--- Starts nginx with one TLS + HTTP/2 server per entry of `servers` ({name=, cert=, limit_rps=}), each on its
-- own free port, proxying /v1/ to the sandbox; limit_rps: nginx's own limit_req on /v1/ (429 above it, a
-- burst of 2). Returns {ports = {name = port}, log = path, stop = fn}.
function M.nginx_front(dir, sandbox_url, servers)
  local upstream = sandbox_url:match("^https?://([^/]+)")
  local ports, blocks = {}, {}
  for _, s in ipairs(servers) do
    ports[s.name] = proc.free_port()
    local limit = ""
    if s.limit_rps then
      blocks[#blocks + 1] = ("  limit_req_zone $server_port zone=%s:1m rate=%dr/s;\n  limit_req_status 429;")
        :format(s.name, s.limit_rps)
      limit = ("limit_req zone=%s burst=2 nodelay; "):format(s.name)
    end
    blocks[#blocks + 1] = ([[
  server {
    listen 127.0.0.1:%d ssl http2;
    ssl_certificate %s/%s.pem;
    ssl_certificate_key %s/%s.key;
    location /v1/ { %sproxy_pass http://sandbox; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }]]):format(ports[s.name], dir, s.cert, dir, s.cert, limit)
  end
  sh("mkdir -p " .. dir .. "/logs " .. dir .. "/tmp")
  h.write(dir .. "/nginx.conf", ([[
worker_processes 1;
pid %s/logs/nginx.pid;
error_log %s/logs/error.log;
events { worker_connections 4096; }
http {
  log_format conns '$connection $connection_requests $server_protocol $status $request_uri';
  access_log %s/logs/access.log conns;
  client_body_temp_path %s/tmp/body; proxy_temp_path %s/tmp/proxy; fastcgi_temp_path %s/tmp/fcgi;
  uwsgi_temp_path %s/tmp/uwsgi; scgi_temp_path %s/tmp/scgi;
  keepalive_requests 100000;
  upstream sandbox { server %s; keepalive 16; }
%s
}
]]):format(dir, dir, dir, dir, dir, dir, dir, dir, upstream, table.concat(blocks, "\n")))
  local server = io.popen((proc.clean_env .. "exec nginx -p %s/ -c %s/nginx.conf -g 'daemon off;' > %s/logs/stdout 2>&1")
    :format(dir, dir, dir), "r")
  local front = { ports = ports, log = dir .. "/logs/access.log", dir = dir }
  function front.stop()
    proc.run(("kill -QUIT $(cat %s/logs/nginx.pid) 2>/dev/null"):format(dir))
    if server then server:close() end
    server = nil
  end
  -- ready when every port accepts a connection
  local deadline = core.now() + 10
  for _, port in pairs(ports) do
    while not proc.run(("python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", %d), 1)'"):format(port)) do
      if core.now() > deadline then
        front.stop()
        error("nginx did not start: " .. tostring(h.read(dir .. "/logs/error.log")) .. tostring(h.read(dir .. "/logs/stdout")))
      end
      core.sleep(0.05)
    end
  end
  return front
end

--- The access log's lines as {connection=, requests=, protocol=, status=, uri=}.
function M.access(front)
  local out = {}
  for line in (h.read(front.log) or ""):gmatch("[^\n]+") do
    local c, n, p, s, u = line:match("^(%d+) (%d+) (%S+) (%d+) (%S+)")
    if c then out[#out + 1] = { connection = c, requests = tonumber(n), protocol = p, status = tonumber(s), uri = u } end
  end
  return out
end

--- How many distinct connections the access log shows, among lines whose URI matches pattern.
function M.connections(front, pattern)
  local seen, n = {}, 0
  for _, e in ipairs(M.access(front)) do
    if (not pattern or e.uri:match(pattern)) and not seen[e.connection] then
      seen[e.connection] = true
      n = n + 1
    end
  end
  return n
end

return M
