-- (c) every request a different session: each one a cache miss and an upstream call.
dofile(os.getenv("BENCH_DIR") .. "/report.lua")
local run = os.getenv("BENCH_RUN") or tostring(os.time())
local counter = 0
request = function()
  counter = counter + 1
  local body = string.format(
    '{"query":"{ checkoutSession(provider: DODO, id: \\"cks_bench_%s_%d\\") { __typename } }"}', run, counter)
  return wrk.format("POST", "/graphql", { ["Content-Type"] = "application/json" }, body)
end
