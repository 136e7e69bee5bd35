import socket

import psycopg

from tests.pgserver import PostgresServer, find_pg_bindir


def test_postgres_server_starts_answers_and_stops():
    assert find_pg_bindir() is not None, "PostgreSQL not found: apt-get install postgresql"
    with PostgresServer() as pg:
        assert pg.url == f"postgresql+psycopg://voicehooks@127.0.0.1:{pg.port}/voicehooks"
        with psycopg.connect(
            host="127.0.0.1", port=pg.port, user="voicehooks", dbname="voicehooks"
        ) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        tmpdir, port = pg.tmpdir, pg.port

    assert pg.port is None
    assert not tmpdir.exists()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "server still listening after stop()"
