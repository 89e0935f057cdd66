-- (c) the same fresh sessions asked of the sandbox provider directly: the upstream's own cost.
dofile(os.getenv("BENCH_DIR") .. "/report.lua")
local run = os.getenv("BENCH_RUN") or tostring(os.time())
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", string.format("/checkouts/cks_bench_%s_%d", run, counter),
    { ["Authorization"] = "Bearer demo_dodo_key" })
end
