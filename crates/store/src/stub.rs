//! TEMPORARY: placeholder trait impls so dependants compile while a backend is written.
//! Remove the `stub_store!` invocation from a backend when it implements the traits.

/// Implements every storage trait for `$t` with "not implemented" errors.
#[macro_export]
macro_rules! stub_store {
    ($t:ty) => {
        const _: () = {
            use async_trait::async_trait;
            use jiff::Timestamp;
            use serde_json::Value;
            use voronka_core::event::EventKind;
            use voronka_core::field::{FieldDefinition, FieldSpec, FieldValue};
            use voronka_core::filter::ContactFilter;
            use voronka_core::subscription::SubscriptionChange;
            use voronka_core::*;
            use $crate::*;
            fn ni<T>() -> Result<T> {
                Err(StoreError::Database("not implemented".into()))
            }
            #[async_trait]
            impl WorkspaceStore for $t {
                async fn create_workspace(&self, _: &str) -> Result<Workspace> {
                    ni()
                }
                async fn get_workspace(&self, _: WorkspaceId) -> Result<Workspace> {
                    ni()
                }
                async fn list_workspaces(&self) -> Result<Vec<Workspace>> {
                    ni()
                }
            }
            #[async_trait]
            impl UserStore for $t {
                async fn create_user(&self, _: WorkspaceId, _: NewUser) -> Result<Member> {
                    ni()
                }
                async fn find_user_by_email(&self, _: &str) -> Result<Option<UserLogin>> {
                    ni()
                }
                async fn list_members(&self, _: WorkspaceId) -> Result<Vec<Member>> {
                    ni()
                }
            }
            #[async_trait]
            impl ApiKeyStore for $t {
                async fn create_api_key(&self, _: WorkspaceId, _: NewApiKey) -> Result<ApiKey> {
                    ni()
                }
                async fn find_api_key(&self, _: &str) -> Result<Option<ApiKeyAuth>> {
                    ni()
                }
                async fn touch_api_key(&self, _: ApiKeyId, _: Timestamp) -> Result<()> {
                    ni()
                }
                async fn list_api_keys(&self, _: WorkspaceId) -> Result<Vec<ApiKey>> {
                    ni()
                }
                async fn revoke_api_key(&self, _: WorkspaceId, _: ApiKeyId) -> Result<ApiKey> {
                    ni()
                }
            }
            #[async_trait]
            impl ChannelStore for $t {
                async fn create_channel(&self, _: WorkspaceId, _: NewChannel) -> Result<Channel> {
                    ni()
                }
                async fn get_channel(&self, _: WorkspaceId, _: ChannelId) -> Result<Channel> {
                    ni()
                }
                async fn list_channels(&self, _: WorkspaceId) -> Result<Vec<Channel>> {
                    ni()
                }
                async fn update_channel(
                    &self,
                    _: WorkspaceId,
                    _: ChannelId,
                    _: ChannelPatch,
                ) -> Result<Channel> {
                    ni()
                }
                async fn delete_channel(&self, _: WorkspaceId, _: ChannelId) -> Result<()> {
                    ni()
                }
            }
            #[async_trait]
            impl SchemaStore for $t {
                async fn create_tag(&self, _: WorkspaceId, _: &str) -> Result<Tag> {
                    ni()
                }
                async fn list_tags(&self, _: WorkspaceId) -> Result<Vec<Tag>> {
                    ni()
                }
                async fn delete_tag(&self, _: WorkspaceId, _: TagId) -> Result<()> {
                    ni()
                }
                async fn create_field(
                    &self,
                    _: WorkspaceId,
                    _: FieldSpec,
                ) -> Result<FieldDefinition> {
                    ni()
                }
                async fn list_fields(&self, _: WorkspaceId) -> Result<Vec<FieldDefinition>> {
                    ni()
                }
                async fn delete_field(&self, _: WorkspaceId, _: FieldId) -> Result<()> {
                    ni()
                }
            }
            #[async_trait]
            impl ContactStore for $t {
                async fn create_contact(&self, _: WorkspaceId, _: NewContact) -> Result<Contact> {
                    ni()
                }
                async fn get_contact(&self, _: WorkspaceId, _: ContactId) -> Result<Contact> {
                    ni()
                }
                async fn update_profile(
                    &self,
                    _: WorkspaceId,
                    _: ContactId,
                    _: voronka_core::contact::Profile,
                ) -> Result<Contact> {
                    ni()
                }
                async fn delete_contact(&self, _: WorkspaceId, _: ContactId) -> Result<()> {
                    ni()
                }
                async fn list_contacts(
                    &self,
                    _: WorkspaceId,
                    _: &ContactQuery,
                ) -> Result<Page<Contact, ContactId>> {
                    ni()
                }
                async fn count_contacts(&self, _: WorkspaceId, _: &ContactFilter) -> Result<u64> {
                    ni()
                }
                async fn add_tags(
                    &self,
                    _: WorkspaceId,
                    _: ContactId,
                    _: &[String],
                ) -> Result<Vec<String>> {
                    ni()
                }
                async fn remove_tag(&self, _: WorkspaceId, _: ContactId, _: &str) -> Result<bool> {
                    ni()
                }
                async fn set_fields(
                    &self,
                    _: WorkspaceId,
                    _: ContactId,
                    _: Vec<FieldValue>,
                ) -> Result<()> {
                    ni()
                }
                async fn unset_field(
                    &self,
                    _: WorkspaceId,
                    _: ContactId,
                    _: FieldId,
                ) -> Result<bool> {
                    ni()
                }
                async fn add_identity(
                    &self,
                    _: WorkspaceId,
                    _: ContactId,
                    _: NewIdentity,
                ) -> Result<Identity> {
                    ni()
                }
                async fn remove_identity(
                    &self,
                    _: WorkspaceId,
                    _: ContactId,
                    _: IdentityId,
                ) -> Result<()> {
                    ni()
                }
                async fn set_subscription(
                    &self,
                    _: WorkspaceId,
                    _: ContactId,
                    _: IdentityId,
                    _: SubscriptionChange,
                ) -> Result<Identity> {
                    ni()
                }
                async fn subscription_history(
                    &self,
                    _: WorkspaceId,
                    _: ContactId,
                ) -> Result<Vec<SubscriptionRecord>> {
                    ni()
                }
                async fn append_event(
                    &self,
                    _: WorkspaceId,
                    _: ContactId,
                    _: EventKind,
                    _: Value,
                ) -> Result<Event> {
                    ni()
                }
                async fn list_events(
                    &self,
                    _: WorkspaceId,
                    _: ContactId,
                    _: Option<EventId>,
                    _: u32,
                ) -> Result<Page<Event, EventId>> {
                    ni()
                }
                async fn export_contact(
                    &self,
                    _: WorkspaceId,
                    _: ContactId,
                ) -> Result<ContactExport> {
                    ni()
                }
                async fn erase_contact(&self, _: WorkspaceId, _: ContactId) -> Result<()> {
                    ni()
                }
                async fn import_contacts(
                    &self,
                    _: WorkspaceId,
                    _: Vec<ImportRow>,
                ) -> Result<Vec<ImportOutcome>> {
                    ni()
                }
            }
            #[async_trait]
            impl IdempotencyStore for $t {
                async fn idempotency_begin(
                    &self,
                    _: WorkspaceId,
                    _: &str,
                    _: &str,
                ) -> Result<IdempotencyBegin> {
                    ni()
                }
                async fn idempotency_complete(
                    &self,
                    _: WorkspaceId,
                    _: &str,
                    _: SavedResponse,
                    _: Option<ContactId>,
                ) -> Result<()> {
                    ni()
                }
                async fn idempotency_abort(&self, _: WorkspaceId, _: &str) -> Result<()> {
                    ni()
                }
                async fn idempotency_purge(&self, _: Timestamp) -> Result<u64> {
                    ni()
                }
            }
            #[async_trait]
            impl AdminStore for $t {
                async fn migrate(&self) -> Result<usize> {
                    ni()
                }
                async fn ping(&self) -> Result<()> {
                    ni()
                }
                fn backend(&self) -> &'static str {
                    "stub"
                }
                async fn find_text_everywhere(&self, _: &str) -> Result<Vec<String>> {
                    ni()
                }
            }
        };
    };
}
