//! `kelson-conformance --endpoint unix:///run/kelson/kelson.sock --image REF --missing REF`:
//! runs the suite against any CRI runtime and prints "N passed, N failed".

use std::path::PathBuf;

use kelson_conformance::suite::{Options, run};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(endpoint), Some(image)) = (arg(&args, "--endpoint"), arg(&args, "--image")) else {
        eprintln!(
            "usage: kelson-conformance --endpoint unix:///path.sock --image REF [--missing REF] [--log-dir DIR] [--filter NAME]"
        );
        return std::process::ExitCode::from(2);
    };
    let missing = arg(&args, "--missing").unwrap_or_else(|| {
        format!(
            "{}-kelson-missing",
            image.split(['@', ':']).next().unwrap_or(&image)
        )
    });
    let cri = match kelson_conformance::connect(&PathBuf::from(endpoint)).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let log_dir = PathBuf::from(
        arg(&args, "--log-dir").unwrap_or_else(|| "/tmp/kelson-conformance-logs".into()),
    );
    let report = run(
        &cri,
        &Options {
            image,
            missing_image: missing,
            log_dir,
        },
        arg(&args, "--filter").as_deref(),
    )
    .await;
    println!("{}", report.summary());
    if report.failed.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
