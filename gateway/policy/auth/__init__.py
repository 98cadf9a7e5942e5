"""Identity and access: authenticators turn a call's credential into a Principal (the front door
runs them, because it sees the metadata and the TLS peer, authenticate.py); rules decide what a
principal may call (authorize.py: AuthorizeStage in the pipeline, the front door for calls that
name no model); keys.py is the API key format, file and store; config.py the `auth` section.

Nothing is imported here: gateway.config imports auth.config, which must not pull in the
pipeline (which imports gateway.config)."""
