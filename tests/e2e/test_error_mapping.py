"""A client's mistake is never answered as a server fault: every refusal the services name maps
to its AWS error with a 4xx status (api/src/error.rs, no catch-all), so SDKs do not retry it and
operators see no ERROR line for it. Nothing is created by the refused calls."""

from __future__ import annotations

import uuid

import pytest

from test_endpoints import import_cert, root_and_server_cert


def test_foreign_acm_arns_are_a_client_error_not_a_fault(server, openssl):
    domain = f"arn-{uuid.uuid4().hex[:6]}.example.com"
    _, cert, key = root_and_server_cert(openssl, domain, "arnmap")
    arn = import_cert(server, cert, key)
    account = arn.split(":")[4]
    other_account = "111122223333" if account != "111122223333" else "444455556666"
    client = server.client()
    before = client.list_domain_configurations()["domainConfigurations"]
    for foreign in (
        arn.replace(f":{account}:", f":{other_account}:"),  # another account's certificate
        arn.replace(":us-east-1:", ":eu-west-3:"),  # another region's certificate
        arn.replace(":acm:", ":iam:"),  # not an ACM ARN at all
    ):
        with pytest.raises(client.exceptions.ClientError) as raised:
            client.create_domain_configuration(
                domainConfigurationName=f"map{uuid.uuid4().hex[:6]}", domainName=domain,
                serverCertificateArns=[foreign],
            )
        response = raised.value.response
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 400, (foreign, response)
        assert response["Error"]["Code"] == "InvalidRequestException", (foreign, response)
    assert client.list_domain_configurations()["domainConfigurations"] == before
