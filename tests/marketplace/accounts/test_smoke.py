def test_register_and_token(vendor):
    assert "models:write" in vendor.scopes
    assert vendor.token("models:read")
