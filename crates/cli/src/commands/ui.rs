//! `kiln ui`: serves the read-only web page over the results store until Ctrl-C.

use std::io::Write;
use std::net::IpAddr;

use anyhow::{Context, Result};
use kiln_store::Store;

use crate::Cli;

pub async fn run(cli: &Cli, host: IpAddr, port: u16, open: bool) -> Result<()> {
    let store = Store::open_read_only(&cli.store)
        .await
        .with_context(|| format!("opening the results store {}", cli.store_label()))?;
    if !host.is_loopback() {
        eprintln!(
            "warning: kiln ui on {host} serves the results store, without authentication, to \
             anyone who can reach this machine"
        );
    }
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .with_context(|| format!("listening on {host} port {port}"))?;
    let url = format!("http://{}/", listener.local_addr()?);
    // The first line names the address (tests and scripts read it with --port 0).
    println!("kiln ui: {} on {url} (Ctrl-C stops it)", cli.store_label());
    std::io::stdout().flush()?;
    if open {
        open_browser(&url);
    }
    let options = kiln_ui::Options {
        results: cli.results.clone(),
        project: std::env::current_dir().context("reading the working directory")?,
    };
    kiln_ui::serve(listener, kiln_ui::router(store, &options))
        .await
        .context("serving kiln ui")
}

fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    if let Err(e) = std::process::Command::new(opener).arg(url).spawn() {
        eprintln!("warning: could not open a browser ({opener}: {e}); open {url}");
    }
}
