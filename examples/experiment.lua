--- A prompt experiment: one idea in three wordings of its subject, two seeds each, side by side.
--   jimeng experiment examples/experiment.lua --dry-run       # the grid, and what it would cost
--   jimeng experiment examples/experiment.lua -o foxes/        # make it; open foxes/index.html meanwhile
--   jimeng experiment examples/experiment.lua -o foxes/ --rows animal --cols seed     # the other way round
--   jimeng experiment examples/experiment.lua -o foxes/ --retake "animal=red-fox,seed=7"
-- Add a seed below and run again: only the new cells are made (and paid for).
return {
  name = "animals at golden hour",
  -- what every cell shares; {animal} is filled in from vars
  base = {
    prompt = "a {animal} walking through tall grass at golden hour, slow dolly shot, cinematic",
    seconds = 5,
    aspect_ratio = "16:9",
  },
  vars = { animal = { "red fox", "snowy owl", "sea otter" } },
  -- any create parameter can vary: prompt, seed, seconds, aspect_ratio, model, image ...
  vary = { seed = { 7, 42 } },
  -- the gallery's default layout (--rows and --cols override it)
  rows = "seed",
  cols = "animal",
}
