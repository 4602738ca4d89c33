-- Loaded by busted before the specs: seed the random numbers used for jitter.
math.randomseed(os.time())
