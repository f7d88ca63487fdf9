-- Model providers per tenant: a JSON array of provider settings (name, kind, base_url, model,
-- api_key_secret, extra_headers, azure_api_version) that replaces the operator's
-- `[server.llm]` providers for the tenant's model tasks; NULL for the operator's.
ALTER TABLE tenants ADD COLUMN llm TEXT;
