//! API tokens: secrets for the TCP listener, each scoped to some VMs, and what a request may do
//! ([`Scope`]). The Unix socket is the trust boundary: its callers, and TCP callers presenting
//! the configured `tcp_token_file` token, see everything. A managed token sees and touches only
//! the VMs in its scope; with `lifecycle` it may also create VMs (which join its scope) and
//! delete its VMs. Only the SHA-256 of a secret is stored, and the secret is shown once.

use std::collections::HashSet;
use std::io::Read;

use nexus_lib::api::{CreateToken, CreatedToken, MAX_TOKEN_NAME_CHARS, MAX_TOKEN_VMS, Token};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::store::tokens::{self as rows, NewToken};
use crate::store::{Store, StoreError, now_ms};

/// Prefix of every secret, so a leaked one is recognisable.
const SECRET_PREFIX: &str = "nxt_";

/// What a request may see and do.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    /// The Unix socket, or the configured TCP token: everything.
    All,
    /// A managed token.
    Token(TokenScope),
}

/// A managed token's rights, as loaded for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenScope {
    pub id: Uuid,
    pub vms: HashSet<Uuid>,
    pub lifecycle: bool,
}

impl Scope {
    /// Whether the VM `id` is visible (and usable).
    pub fn sees(&self, id: Uuid) -> bool {
        match self {
            Self::All => true,
            Self::Token(t) => t.vms.contains(&id),
        }
    }

    /// Whether VMs may be created and deleted.
    pub fn lifecycle(&self) -> bool {
        match self {
            Self::All => true,
            Self::Token(t) => t.lifecycle,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("no VM named or with id {0:?}")]
    VmNotFound(String),
    #[error("no token with id {0:?}")]
    NotFound(String),
    #[error("cannot read random bytes for a token")]
    Random(#[source] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates, lists, revokes and checks tokens.
#[derive(Debug, Clone)]
pub struct TokenService {
    store: Store,
}

impl TokenService {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    pub async fn create(&self, req: CreateToken) -> Result<CreatedToken, TokenError> {
        if req.vms.len() > MAX_TOKEN_VMS {
            return Err(TokenError::Invalid {
                field: "vms",
                message: format!("at most {MAX_TOKEN_VMS} VMs"),
            });
        }
        if let Some(name) = &req.name
            && (name.chars().count() > MAX_TOKEN_NAME_CHARS || name.chars().any(char::is_control))
        {
            return Err(TokenError::Invalid {
                field: "name",
                message: format!(
                    "at most {MAX_TOKEN_NAME_CHARS} characters, no control characters"
                ),
            });
        }
        let secret = new_secret()?;
        let token = NewToken {
            id: Uuid::now_v7(),
            name: req.name,
            digest: digest(secret.as_bytes()),
            lifecycle: req.lifecycle,
            created_at_ms: now_ms(),
        };
        let vms = req.vms;
        let created = self
            .store
            .call(move |conn| rows::insert(conn, &token, &vms))
            .await?;
        match created {
            Ok(info) => Ok(CreatedToken {
                token: secret,
                info,
            }),
            Err(missing) => Err(TokenError::VmNotFound(missing)),
        }
    }

    pub async fn list(&self) -> Result<Vec<Token>, TokenError> {
        Ok(self.store.call(|conn| rows::list(conn)).await?)
    }

    pub async fn revoke(&self, id: &str) -> Result<(), TokenError> {
        let uuid = Uuid::parse_str(id).map_err(|_| TokenError::NotFound(id.to_owned()))?;
        match self
            .store
            .call(move |conn| rows::delete(conn, uuid))
            .await?
        {
            true => Ok(()),
            false => Err(TokenError::NotFound(id.to_owned())),
        }
    }

    /// The scope of the managed token whose secret is `presented`, if there is one.
    pub async fn authenticate(&self, presented: &[u8]) -> Result<Option<TokenScope>, StoreError> {
        if !presented.starts_with(SECRET_PREFIX.as_bytes()) {
            return Ok(None);
        }
        let digest = digest(presented);
        let grant = self
            .store
            .call(move |conn| rows::grant(conn, &digest))
            .await?;
        Ok(grant.map(|g| TokenScope {
            id: g.id,
            vms: g.vms.into_iter().collect(),
            lifecycle: g.lifecycle,
        }))
    }

    /// Puts a VM the token created into its scope.
    pub async fn grant_vm(&self, token: Uuid, vm: Uuid) -> Result<(), StoreError> {
        self.store
            .call(move |conn| rows::add_vm(conn, token, vm))
            .await
    }
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// `nxt_` and 64 hex digits from the kernel's CSPRNG.
fn new_secret() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(TokenError::Random)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{SECRET_PREFIX}{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> (tempfile::TempDir, TokenService, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        (dir, TokenService::new(store.clone()), store)
    }

    #[tokio::test]
    async fn a_created_secret_authenticates_and_a_revoked_one_does_not() {
        let (_dir, tokens, _) = service();
        let created = tokens.create(CreateToken::default()).await.unwrap();

        let scope = tokens.authenticate(created.token.as_bytes()).await.unwrap();
        tokens.revoke(&created.info.id.to_string()).await.unwrap();
        let after = tokens.authenticate(created.token.as_bytes()).await.unwrap();

        assert_eq!(scope.map(|s| s.id), Some(created.info.id));
        assert_eq!(after, None);
    }

    #[tokio::test]
    async fn a_token_naming_a_missing_vm_is_refused_and_nothing_is_stored() {
        let (_dir, tokens, _) = service();
        let req = CreateToken {
            vms: vec!["ghost".into()],
            ..CreateToken::default()
        };

        let err = tokens.create(req).await.unwrap_err();

        assert!(
            matches!(err, TokenError::VmNotFound(ref v) if v == "ghost"),
            "{err}"
        );
        assert!(tokens.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn only_the_digest_is_stored() {
        let (_dir, tokens, store) = service();
        let created = tokens.create(CreateToken::default()).await.unwrap();

        let secret = created.token.clone();
        let found: i64 = store
            .call(move |conn| {
                Ok(conn.query_row(
                    "SELECT count(*) FROM api_tokens WHERE CAST(digest AS TEXT) LIKE '%' || ?1 || '%'",
                    [&secret[4..20]],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap();

        assert_eq!(found, 0);
        assert!(created.token.starts_with("nxt_") && created.token.len() == 68);
    }
}
