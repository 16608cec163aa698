//! Bearer API-key authentication and scope checks.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use voronka_core::apikey;
use voronka_core::role::Scope;
use voronka_core::{ApiKeyId, WorkspaceId};

/// The authenticated caller: the key's workspace and scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// The workspace every request of this key is confined to.
    pub workspace: WorkspaceId,
    /// The key.
    pub key_id: ApiKeyId,
    /// What the key may do.
    pub scopes: Vec<Scope>,
}

impl Auth {
    /// Refuses with 403 unless the key holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(scope))
        }
    }
}

/// Checks the `Authorization: Bearer` header against the store. Every failure is the
/// same 401 so a caller learns nothing about which keys exist.
pub async fn authenticate(headers: &HeaderMap, state: &AppState) -> Result<Auth, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .ok_or_else(ApiError::unauthorized)?;
    let prefix = apikey::prefix_of(token).ok_or_else(ApiError::unauthorized)?;
    let found = state
        .store()
        .find_api_key(prefix)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    if !apikey::verify(token, &found.secret_hash) || found.key.revoked_at.is_some() {
        return Err(ApiError::unauthorized());
    }
    state.note_key_use(found.key.id);
    Ok(Auth {
        workspace: found.key.workspace_id,
        key_id: found.key.id,
        scopes: found.key.scopes,
    })
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // The idempotency middleware may have authenticated the request already.
        if let Some(auth) = parts.extensions.get::<Auth>() {
            return Ok(auth.clone());
        }
        let auth = authenticate(&parts.headers, state).await?;
        parts.extensions.insert(auth.clone());
        Ok(auth)
    }
}

/// A scope as a type, so handlers can demand it in their signature with [`Need`] and be
/// refused before their body is read.
pub trait RequiredScope {
    /// The scope demanded.
    const SCOPE: Scope;
}

/// Marker types for [`Need`], one per scope.
pub mod scope {
    use super::RequiredScope;
    use voronka_core::role::Scope;

    macro_rules! markers {
        ($($(#[$doc:meta])* $name:ident => $scope:ident),* $(,)?) => {$(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy)]
            pub struct $name;
            impl RequiredScope for $name {
                const SCOPE: Scope = Scope::$scope;
            }
        )*};
    }

    markers! {
        /// `contacts:read`.
        ContactsRead => ContactsRead,
        /// `contacts:write`.
        ContactsWrite => ContactsWrite,
        /// `contacts:erase`.
        ContactsErase => ContactsErase,
        /// `schema:write`.
        SchemaWrite => SchemaWrite,
        /// `channels:read`.
        ChannelsRead => ChannelsRead,
        /// `channels:write`.
        ChannelsWrite => ChannelsWrite,
        /// `messages:send`.
        MessagesSend => MessagesSend,
        /// `admin`.
        Admin => Admin,
    }
}

/// An authenticated caller holding scope `S` (401 without a valid key, 403 without the
/// scope). Dereferences to [`Auth`].
#[derive(Debug, Clone)]
pub struct Need<S>(pub Auth, std::marker::PhantomData<S>);

impl<S> std::ops::Deref for Need<S> {
    type Target = Auth;
    fn deref(&self) -> &Auth {
        &self.0
    }
}

impl<S: RequiredScope + Send + Sync> FromRequestParts<AppState> for Need<S> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let auth = Auth::from_request_parts(parts, state).await?;
        auth.require(S::SCOPE)?;
        Ok(Need(auth, std::marker::PhantomData))
    }
}
