-- The init of the Neovim specs: only $VIMRUNTIME and the package directory $JIMENG_PACK (whose
-- pack/plugins/start/jimeng is a link to this checkout), as a plugin manager's native-package install leaves it.
vim.opt.rtp = { vim.env.VIMRUNTIME }
vim.opt.packpath = { vim.env.JIMENG_PACK }
