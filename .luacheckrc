std = "max"
max_line_length = 130
files["spec/"] = { std = "+busted", max_line_length = 170 } -- table-driven rows read best on one line
exclude_files = { "build/" }
