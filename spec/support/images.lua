-- Small image files for the local-image specs, made on the fly.
local M = {}

--- Writes a real grayscale PNG of w x h pixels (zlib from Python's standard library, as the sandbox uses).
function M.png(path, w, h)
  local script = ([[
import struct, zlib
w, h = %d, %d
raw = b"".join(b"\x00" + bytes((x * 7 + y) %% 256 for x in range(w)) for y in range(h))
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + \
      chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
open(%q, "wb").write(png)
]]):format(w, h, path)
  local p = assert(io.popen("unset LD_PRELOAD; python3 -", "w"))
  p:write(script)
  assert(p:close())
  return path
end

--- Writes a JPEG whose headers say w x h (SOI, JFIF APP0, SOF0, EOI): what the client reads to check it;
-- `pad` bytes after the end marker make it as large as a test needs.
function M.jpeg(path, w, h, pad)
  local function u16(n) return string.char(math.floor(n / 256) % 256, n % 256) end
  local app0 = "\255\224" .. u16(16) .. "JFIF\0" .. "\1\1\0" .. u16(1) .. u16(1) .. "\0\0"
  local sof0 = "\255\192" .. u16(17) .. "\8" .. u16(h) .. u16(w) .. "\3" .. "\1\34\0" .. "\2\17\1" .. "\3\17\1"
  local f = assert(io.open(path, "wb"))
  f:write("\255\216", app0, sof0, "\255\217", pad and ("\0"):rep(pad) or "")
  f:close()
  return path
end

--- Writes `bytes` bytes of something that is no image.
function M.junk(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(("GIF89a not supported "):rep(math.ceil(bytes / 21)):sub(1, bytes))
  f:close()
  return path
end

return M
