-- (a) one cached checkoutSession, the same query every time: the gateway's hit path.
dofile(os.getenv("BENCH_DIR") .. "/report.lua")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"query":"{ checkoutSession(provider: DODO, id: \\"cks_demo_succeeded\\") { __typename ... on CheckoutSession { provider id status providerStatus customerEmail createdAt fetchedAt } } }"}'
