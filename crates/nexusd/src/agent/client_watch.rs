//! [`AgentClient::watch`]: a guest directory's changes as the agent's inotify watch reports
//! them (`GET /v1/watch`), each event checked before it is passed on.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use http::Method;
use nexus_lib::agent::{WATCH_KEEPALIVE_MS, WatchEvent};

use super::{
    AgentClient, AgentError, StreamBound, bounded, check, empty, event_lines, path_uri, request,
};

/// Longest a watch stream lasts before nexusd ends it (the caller may watch again).
const WATCH_TOTAL: Duration = Duration::from_secs(7 * 24 * 3600);

impl AgentClient {
    /// Watches `dir` (and its subdirectories when `recursive`) until the stream is dropped.
    /// Keep-alives are passed on; a guest silent for twice their period, or sending an event
    /// that is not a bounded relative name, ends the stream with an error.
    pub async fn watch(
        &self,
        dir: &str,
        recursive: bool,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<WatchEvent, AgentError>> + Send>>, AgentError>
    {
        let uri = path_uri("/v1/watch", dir, &format!("&recursive={recursive}"))?;
        let resp = self
            .timed(async { check(self.send(request(Method::GET, &uri, empty())?).await?).await })
            .await?;
        let bound = StreamBound {
            idle: Some(Duration::from_millis(WATCH_KEEPALIVE_MS * 2 + 5_000)),
            deadline: tokio::time::Instant::now() + WATCH_TOTAL,
            total: WATCH_TOTAL,
        };
        let events = bounded(
            event_lines::<WatchEvent>(resp.into_body()),
            bound,
            self.socket_path().to_path_buf(),
        );
        // The first bad event ends the stream: what follows it is not trusted either.
        let checked = events
            .map(|item| {
                item.and_then(|(_, event)| {
                    event
                        .validate()
                        .map(|()| event)
                        .map_err(AgentError::Malformed)
                })
            })
            .scan(false, |failed, item| {
                let out = (!*failed).then_some(item);
                if let Some(Err(_)) = &out {
                    *failed = true;
                }
                std::future::ready(out)
            });
        Ok(Box::pin(checked))
    }
}
