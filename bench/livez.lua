-- (b) /livez: the ceiling of the same HTTP stack on the same server.
dofile(os.getenv("BENCH_DIR") .. "/report.lua")
