use std::process::ExitCode;

use clap::Args;

use super::client::AdminClient;
use super::output;
use super::ClientArgs;

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The request id from the refused response's `x-request-id` header (`req_...`).
    request_id: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// Prints why keygate refused a request, in plain words.
pub async fn run(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let api = AdminClient::from_env(&args.client.url)?;
    let record = api.get(&format!("/v1/organization/requests/{}", args.request_id)).await?;
    if args.client.json {
        output::json(&record);
        return Ok(ExitCode::SUCCESS);
    }
    output::line(&format!(
        "{} {} {} -> {} at {}{}",
        output::text(&record["id"]),
        output::text(&record["method"]),
        output::text(&record["path"]),
        output::text(&record["status"]),
        output::when(record["created_at"].as_i64()),
        record["client_ip"].as_str().map(|ip| format!(" from {ip}")).unwrap_or_default(),
    ));
    output::line(&format!("reason: {}", output::text(&record["reason"])));
    output::line(&output::text(&record["explanation"]));
    Ok(ExitCode::SUCCESS)
}
