-- POST a small chat completion; KEY and STREAM come from the environment.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("KEY") or "none")
local stream = os.getenv("STREAM") == "1"
wrk.body = '{"model":"gpt-4o-mini","stream":' .. (stream and "true" or "false") ..
  ',"messages":[{"role":"user","content":"Say hello"}]}'

done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %.1f %d %d %d %d %d\n",
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
