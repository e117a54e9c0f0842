//! Who sent a request, from the listener it came through: the Unix socket records its peer's
//! credentials per connection (`SO_PEERCRED`), and anything else is a TCP client. Handlers that
//! take host paths pass this to the domain service, which applies [`crate::hostpath`].

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::http::request::Parts;
use axum::serve::IncomingStream;
use tokio::net::UnixListener;

use super::JsonErrorsListener;
use crate::hostpath::{Caller, PeerCred};

/// Connection info of the Unix listener: the peer's credentials, `None` if the kernel would not
/// give them (such a connection is treated like a TCP client).
#[derive(Debug, Clone)]
pub struct UnixPeer(pub Option<PeerCred>);

impl Connected<IncomingStream<'_, JsonErrorsListener<UnixListener>>> for UnixPeer {
    fn connect_info(stream: IncomingStream<'_, JsonErrorsListener<UnixListener>>) -> Self {
        match PeerCred::of(stream.io().get_ref()) {
            Ok(cred) => Self(Some(cred)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the credentials of a Unix-socket peer");
                Self(None)
            }
        }
    }
}

/// Extracts the request's [`Caller`]; never fails (no Unix peer info means TCP, the narrower).
pub struct ApiCaller(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for ApiCaller {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self(
            match parts.extensions.get::<ConnectInfo<UnixPeer>>() {
                Some(ConnectInfo(UnixPeer(Some(cred)))) => Caller::Unix(cred.clone()),
                _ => Caller::Tcp,
            },
        ))
    }
}
