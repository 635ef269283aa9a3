//! One run's own topic prefix: chime's four topics, created fresh and
//! deleted afterwards so repeated runs do not pile up partitions.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;

use chime_wire::Topics;

pub struct Deployment {
    pub bootstrap: String,
    pub prefix: String,
    pub topics: Topics,
    pub partitions: i32,
}

impl Deployment {
    /// The deployment on `prefix`, whose topics someone else creates (a
    /// spawned `chime all` does).
    pub fn named(bootstrap: &str, prefix: &str, partitions: i32) -> Deployment {
        Deployment {
            bootstrap: bootstrap.to_string(),
            prefix: prefix.to_string(),
            topics: Topics::new(prefix),
            partitions,
        }
    }

    /// Creates the four topics on `prefix`.
    pub async fn create(
        bootstrap: &str,
        prefix: &str,
        partitions: i32,
    ) -> anyhow::Result<Deployment> {
        let d = Deployment::named(bootstrap, prefix, partitions);
        chime_kafka::admin::create_topics(bootstrap, &d.topics, partitions).await?;
        Ok(d)
    }

    /// Deletes the topics; best effort: a topic left behind only costs
    /// broker disk, and is named in a warning.
    pub async fn remove(self) {
        let admin: Result<AdminClient<DefaultClientContext>, _> =
            chime_kafka::client_config(&self.bootstrap, "chime-bench-admin").create();
        let t = &self.topics;
        let names = [
            t.timers.as_str(),
            t.changelog.as_str(),
            t.fires.as_str(),
            t.dead_letters.as_str(),
        ];
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let deleted = match admin {
            Ok(admin) => admin.delete_topics(&names, &opts).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = deleted {
            tracing::warn!(error = %e, prefix = %self.prefix, "could not delete the run's topics");
        }
    }
}
