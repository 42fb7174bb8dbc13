//! The mock upstream for `bench/run.sh`: keygate's built-in mock (OpenAI
//! shapes, SSE included) on `127.0.0.1:$PORT`.

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port = std::env::var("PORT").ok().and_then(|p| p.parse::<u16>().ok()).unwrap_or(18_001);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    keygate::mock::serve(listener, std::future::pending()).await
}
