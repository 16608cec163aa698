-- Erased contacts, for counts driven from contact_tags / contact_fields: the count
-- subtracts them with an anti-join on this (tiny) index instead of probing `contacts`
-- for every matching id. See src/postgres/filter.rs, count_query.
CREATE INDEX contacts_erased ON contacts (id) WHERE erased_at IS NOT NULL;
