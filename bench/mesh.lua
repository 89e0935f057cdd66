-- (k) the session of cached.lua through Hive Gateway + Mesh (bench/mesh): Dodo's own field names.
dofile(os.getenv("BENCH_DIR") .. "/report.lua")
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"query":"{ checkout(id: \\"cks_demo_succeeded\\") { id payment_status customer_email created_at } }"}'
