//! Users' roles and API keys' scopes.

use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// What a user may do in a workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Owns the workspace: everything, including deleting it and managing owners.
    Owner,
    /// Manages users, channels, settings and everything marketers do.
    Admin,
    /// Builds flows, segments and broadcasts; manages contacts.
    Marketer,
    /// Answers conversations in the inbox; reads contacts.
    Operator,
    /// Reads reports and contacts; cannot send or change anything.
    Analyst,
}

impl Role {
    /// All roles, most powerful first.
    pub const ALL: [Role; 5] = [
        Role::Owner,
        Role::Admin,
        Role::Marketer,
        Role::Operator,
        Role::Analyst,
    ];

    /// The stable lowercase name used in storage, API and CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Marketer => "marketer",
            Role::Operator => "operator",
            Role::Analyst => "analyst",
        }
    }

    /// The scopes a user with this role holds.
    pub fn scopes(self) -> &'static [Scope] {
        use Scope::*;
        match self {
            Role::Owner | Role::Admin => &Scope::ALL,
            Role::Marketer => &[
                ContactsRead,
                ContactsWrite,
                ContactsErase,
                SchemaWrite,
                ChannelsRead,
                MessagesSend,
                FlowsRead,
                FlowsWrite,
                EventsWrite,
                BroadcastsRead,
                BroadcastsWrite,
            ],
            Role::Operator => &[
                ContactsRead,
                ContactsWrite,
                ChannelsRead,
                MessagesSend,
                FlowsRead,
            ],
            Role::Analyst => &[ContactsRead, ChannelsRead, FlowsRead, BroadcastsRead],
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role `{s}` (expected owner, admin, marketer, operator or analyst)")
            })
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A permission an API key carries. Keys hold only the scopes they were created with.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub enum Scope {
    /// Read contacts, their identities, tags, fields, timeline and export; list tags and fields.
    #[serde(rename = "contacts:read")]
    ContactsRead,
    /// Create, update and delete contacts; set tags, fields, identities, subscriptions; import.
    #[serde(rename = "contacts:write")]
    ContactsWrite,
    /// Erase a contact's personal data (right to be forgotten).
    #[serde(rename = "contacts:erase")]
    ContactsErase,
    /// Create and delete tags and custom field definitions.
    #[serde(rename = "schema:write")]
    SchemaWrite,
    /// List channels.
    #[serde(rename = "channels:read")]
    ChannelsRead,
    /// Connect, change and remove channels.
    #[serde(rename = "channels:write")]
    ChannelsWrite,
    /// Send messages to contacts (consent rules still apply).
    #[serde(rename = "messages:send")]
    MessagesSend,
    /// Read flows, their versions, runs and statistics.
    #[serde(rename = "flows:read")]
    FlowsRead,
    /// Create, edit, publish and archive flows; start and release contacts' runs.
    #[serde(rename = "flows:write")]
    FlowsWrite,
    /// Post events about contacts (`order_shipped`) that start or end their runs.
    #[serde(rename = "events:write")]
    EventsWrite,
    /// Read segments, broadcasts, their reports, recipients and live progress.
    #[serde(rename = "broadcasts:read")]
    BroadcastsRead,
    /// Create and edit segments and broadcasts; schedule, send, pause, resume, cancel, recall.
    #[serde(rename = "broadcasts:write")]
    BroadcastsWrite,
    /// Manage API keys, users and workspace settings.
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 13] = [
        Scope::ContactsRead,
        Scope::ContactsWrite,
        Scope::ContactsErase,
        Scope::SchemaWrite,
        Scope::ChannelsRead,
        Scope::ChannelsWrite,
        Scope::MessagesSend,
        Scope::FlowsRead,
        Scope::FlowsWrite,
        Scope::EventsWrite,
        Scope::BroadcastsRead,
        Scope::BroadcastsWrite,
        Scope::Admin,
    ];

    /// The stable name used in storage, API and CLI (`contacts:read`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ContactsRead => "contacts:read",
            Scope::ContactsWrite => "contacts:write",
            Scope::ContactsErase => "contacts:erase",
            Scope::SchemaWrite => "schema:write",
            Scope::ChannelsRead => "channels:read",
            Scope::ChannelsWrite => "channels:write",
            Scope::MessagesSend => "messages:send",
            Scope::FlowsRead => "flows:read",
            Scope::FlowsWrite => "flows:write",
            Scope::EventsWrite => "events:write",
            Scope::BroadcastsRead => "broadcasts:read",
            Scope::BroadcastsWrite => "broadcasts:write",
            Scope::Admin => "admin",
        }
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown scope `{s}` (expected one of {})", all.join(", "))
            })
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        for s in Scope::ALL {
            assert_eq!(s.as_str().parse::<Scope>(), Ok(s));
            let json = serde_json::to_string(&s).expect("serializes");
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn analyst_cannot_write() {
        assert!(!Role::Analyst.scopes().contains(&Scope::ContactsWrite));
        assert!(Role::Owner.scopes().contains(&Scope::Admin));
        assert!(!Role::Analyst.scopes().contains(&Scope::FlowsWrite));
        assert!(Role::Analyst.scopes().contains(&Scope::FlowsRead));
        assert!(Role::Marketer.scopes().contains(&Scope::FlowsWrite));
    }
}
