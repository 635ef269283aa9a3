//! Readiness: "is Kafka reachable?", for the `/readyz` endpoints.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

/// "Is Kafka reachable?", answered by a metadata fetch with a short timeout
/// and remembered briefly so a busy `/readyz` does not load the broker.
pub struct KafkaProbe {
    client: Arc<BaseConsumer>,
    topic: String,
    last: Mutex<Option<(Instant, bool)>>,
}

impl KafkaProbe {
    const TIMEOUT: Duration = Duration::from_secs(1);
    const REMEMBER: Duration = Duration::from_secs(1);

    /// A probe asking for the metadata of `topic`.
    pub fn new(bootstrap: &str, topic: &str) -> anyhow::Result<Self> {
        let client: BaseConsumer = crate::client_config(bootstrap, "chime-readiness").create()?;
        Ok(KafkaProbe {
            client: Arc::new(client),
            topic: topic.to_string(),
            last: Mutex::new(None),
        })
    }

    /// Ok, or why Kafka is not reachable.
    pub async fn check(&self) -> Result<(), String> {
        let remembered = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, ok)) = remembered {
            if at.elapsed() < Self::REMEMBER {
                return if ok {
                    Ok(())
                } else {
                    Err("Kafka is not reachable".into())
                };
            }
        }
        let client = self.client.clone();
        let topic = self.topic.clone();
        let result = tokio::task::spawn_blocking(move || {
            client
                .fetch_metadata(Some(&topic), Self::TIMEOUT)
                .map_err(|e| format!("Kafka is not reachable: {e}"))
                .and_then(|m| match m.topics().first().and_then(|t| t.error()) {
                    Some(e) => Err(format!("Kafka metadata for {topic}: {e:?}")),
                    None => Ok(()),
                })
        })
        .await
        .unwrap_or_else(|e| Err(format!("readiness probe failed: {e}")));
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), result.is_ok()));
        result
    }
}
