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
-- BENCH_UNIQUE  a seed: every request's first "content" gets its own prefix (no two
--               requests alike, e.g. a result cache's 0 % hit rate)
-- BENCH_TOKENS  bearer tokens, one per line: requests take them in turn (many keys,
--               each with its own budget counters), instead of BENCH_TOKEN
local unique = os.getenv("BENCH_UNIQUE")
if unique == "" then unique = nil end
local tokens = {}
for line in (os.getenv("BENCH_TOKENS") or ""):gmatch("[^\n]+") do
  tokens[#tokens + 1] = line
end
if unique ~= nil or #tokens > 0 then
  if unique ~= nil then math.randomseed(tonumber(unique)) end
  local n = 0
  local headers = {}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  request = function()
    n = n + 1
    local body = wrk.body
    if unique ~= nil then
      local prefix = '"content":"' .. n .. "-" .. math.random(1000000000) .. " "
      body = body:gsub('"content":"', prefix, 1)
    end
    if #tokens > 0 then
      headers["Authorization"] = "Bearer " .. tokens[(n % #tokens) + 1]
    end
    return wrk.format(nil, nil, headers, body)
  end
end
