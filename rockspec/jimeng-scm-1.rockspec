-- The development rockspec: `luarocks make --deps-mode=none rockspec/jimeng-scm-1.rockspec` from the checkout.
-- The module's version lives in src/jimeng.h alone (jimeng._VERSION); this file names no release.
rockspec_format = "3.0"
package = "jimeng"
version = "scm-1"
source = {
  url = "git+file://.",
}
description = {
  summary = "Jimeng video-generation API client (tokenops.ai): C core on libcurl, Lua API",
  detailed = [[
Create Jimeng videos (text-to-video, image-to-video, first/last frame, camera moves) and OmniHuman
talking-head videos, wait for them and download the MP4: requests checked before any paid call,
retries that never pay twice, atomic resumable downloads, coroutines, OpenResty and Neovim.]],
  license = "MIT",
  labels = { "video", "api", "http", "curl" },
}
dependencies = {
  "lua >= 5.1",
  "lua-cjson",
}
-- Found by its library: Debian keeps curl/curl.h in the multiarch include directory, which luarocks does not
-- search for headers, so the include directories below name it (CURL_INCDIR still overrides).
external_dependencies = {
  CURL = { library = "curl" },
}
build = {
  type = "builtin",
  modules = {
    ["jimeng.core"] = {
      sources = { "src/core.c", "src/util.c", "src/signals.c", "src/engine.c", "src/configure.c", "src/queue.c",
        "src/pace.c", "src/callbacks.c", "src/transfer.c", "src/host.c", "src/request.c", "src/response.c",
        "src/status.c", "src/files.c", "src/url.c", "src/mp4.c", "src/loop.c", "src/share.c", "src/share_redis.c" },
      libraries = { "curl", "pthread", "m" },
      incdirs = { "$(CURL_INCDIR)", "$(CURL_INCDIR)/x86_64-linux-gnu", "$(CURL_INCDIR)/aarch64-linux-gnu",
        "$(CURL_INCDIR)/i386-linux-gnu", "$(CURL_INCDIR)/arm-linux-gnueabihf" },
      libdirs = { "$(CURL_LIBDIR)" },
    },
    ["jimeng"] = "lua/jimeng/init.lua",
    ["jimeng.batch"] = "lua/jimeng/batch.lua",
    ["jimeng.budget"] = "lua/jimeng/budget.lua",
    ["jimeng.cli"] = "lua/jimeng/cli.lua",
    ["jimeng.cli.config"] = "lua/jimeng/cli/config.lua",
    ["jimeng.cli.doctor"] = "lua/jimeng/cli/doctor.lua",
    ["jimeng.cli.help"] = "lua/jimeng/cli/help.lua",
    ["jimeng.cli.ledger"] = "lua/jimeng/cli/ledger.lua",
    ["jimeng.cli.progress"] = "lua/jimeng/cli/progress.lua",
    ["jimeng.client"] = "lua/jimeng/client.lua",
    ["jimeng.download"] = "lua/jimeng/download.lua",
    ["jimeng.errors"] = "lua/jimeng/errors.lua",
    ["jimeng.experiment"] = "lua/jimeng/experiment.lua",
    ["jimeng.gallery"] = "lua/jimeng/gallery.lua",
    ["jimeng.health"] = "lua/jimeng/health.lua",
    ["jimeng.http"] = "lua/jimeng/http.lua",
    ["jimeng.ledger"] = "lua/jimeng/ledger.lua",
    ["jimeng.neterrors"] = "lua/jimeng/neterrors.lua",
    ["jimeng.dialect"] = "lua/jimeng/dialect.lua",
    ["jimeng.nvim"] = "lua/jimeng/nvim.lua",
    ["jimeng.openresty"] = "lua/jimeng/openresty.lua",
    ["jimeng.plugin"] = "lua/jimeng/plugin.lua",
    ["jimeng.runtime"] = "lua/jimeng/runtime.lua",
    ["jimeng.sandbox"] = "lua/jimeng/sandbox.lua",
    ["jimeng.template"] = "lua/jimeng/template.lua",
    ["jimeng.trace"] = "lua/jimeng/trace.lua",
    ["jimeng.share"] = "lua/jimeng/share.lua",
    ["jimeng.text"] = "lua/jimeng/text.lua",
    ["jimeng.workflows"] = "lua/jimeng/workflows.lua",
  },
  install = {
    bin = { jimeng = "bin/jimeng" },
  },
}
