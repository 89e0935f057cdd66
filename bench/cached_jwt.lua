-- (j) one cached checkoutSession, as (a), from a client with a JWT (BENCH_TOKEN).
dofile(os.getenv("BENCH_DIR") .. "/report.lua")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
wrk.body = '{"query":"{ checkoutSession(provider: DODO, id: \\"cks_demo_succeeded\\") { __typename ... on CheckoutSession { provider id status providerStatus customerEmail createdAt fetchedAt } } }"}'
