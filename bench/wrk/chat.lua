-- wrk script: POST a small chat completion (what every bench scenario sends).
-- The token and body come from the environment so no secret is written to disk:
--   BENCH_TOKEN  bearer token for the gateway (unset or empty: no Authorization header)
--   BENCH_BODY   JSON request body (default: a one-message, non-streaming request)
--   BENCH_PATH   request path (default /v1/chat/completions)
--   BENCH_HEADERS  extra headers, one "Name: value" per line (peer gateways route by header)
wrk.method = "POST"
wrk.path = os.getenv("BENCH_PATH") or "/v1/chat/completions"
wrk.body = os.getenv("BENCH_BODY") or
  '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}],"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("BENCH_TOKEN")
if token ~= nil and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
local extra = os.getenv("BENCH_HEADERS")
if extra ~= nil then
  for line in extra:gmatch("[^\n]+") do
    local name, value = line:match("^%s*([^:]-)%s*:%s*(.-)%s*$")
    if name ~= nil and name ~= "" then
      wrk.headers[name] = value
    end
  end
end
