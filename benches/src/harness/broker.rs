//! The broker as something a run may stop, kill and start: through
//! `scripts/kafka` (which only ever signals a broker it started itself),
//! and whether it answers, asked the way `scripts/kafka status` asks — one
//! Kafka ApiVersions request over a fresh connection, answered only once the
//! broker serves requests.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `scripts/kafka <command>` with this process's environment (so the same
/// `CHIME_KAFKA_PORT` / `CHIME_KAFKA_HOME` as the broker the run is on).
pub async fn script(script: &Path, command: &str) -> anyhow::Result<()> {
    let script = script.to_path_buf();
    let command = command.to_string();
    let out = tokio::task::spawn_blocking(move || Command::new(&script).arg(&command).output())
        .await?
        .context("running the broker script")?;
    anyhow::ensure!(
        out.status.success(),
        "scripts/kafka: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The correlation id the probe sends and expects back ("chme").
const CORRELATION: [u8; 4] = *b"chme";

/// An ApiVersions v0 request: size, api key 18, version 0, correlation id,
/// client id "chime".
fn api_versions_request() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&CORRELATION);
    body.extend_from_slice(&5i16.to_be_bytes());
    body.extend_from_slice(b"chime");
    let mut request = (body.len() as i32).to_be_bytes().to_vec();
    request.extend(body);
    request
}

/// Whether the first broker of `bootstrap` answers a Kafka request within
/// `within`.
pub async fn answers(bootstrap: &str, within: Duration) -> bool {
    let Some(address) = bootstrap.split(',').next().map(str::trim) else {
        return false;
    };
    let ask = async {
        let mut stream = TcpStream::connect(address).await?;
        stream.write_all(&api_versions_request()).await?;
        let mut head = [0u8; 8];
        stream.read_exact(&mut head).await?;
        Ok::<bool, std::io::Error>(head[4..8] == CORRELATION)
    };
    matches!(tokio::time::timeout(within, ask).await, Ok(Ok(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_what_scripts_kafka_sends() {
        // scripts/kafka: "\x00\x00\x00\x0f\x00\x12\x00\x00chme\x00\x05chime"
        let expected = b"\x00\x00\x00\x0f\x00\x12\x00\x00chme\x00\x05chime";
        assert_eq!(api_versions_request(), expected.to_vec());
    }

    #[tokio::test]
    async fn nothing_listening_does_not_answer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        assert!(!answers(&addr.to_string(), Duration::from_secs(1)).await);
    }
}
