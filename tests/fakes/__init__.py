"""Local stand-ins for the outside world's APIs: small Starlette servers that speak the
documented protocol, error answers included, served on 127.0.0.1 by the tests."""
