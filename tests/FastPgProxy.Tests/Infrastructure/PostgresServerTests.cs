using System;
using System.Collections.Generic;
using System.IO;
using System.Threading.Tasks;
using Npgsql;
using Xunit;

namespace FastPgProxy.Tests.Infrastructure;

/// <summary>Proves the shared scratch server is set up the way the end-to-end tests rely on.</summary>
[Collection(PostgresCollection.Name)]
public sealed class PostgresServerTests(PostgresFixture fixture)
{
    private readonly PostgresServer _server = fixture.Server;

    [Fact]
    public async Task Superuser_connects_over_tcp_and_reports_version()
    {
        string? version = await _server.ScalarAsync<string>("SELECT version()");

        Assert.NotNull(version);
        Assert.StartsWith("PostgreSQL ", version, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(PostgresServer.Md5User, PostgresServer.Md5Password)]
    [InlineData(PostgresServer.ScramUser, PostgresServer.ScramPassword)]
    [InlineData(PostgresServer.ClearUser, PostgresServer.ClearPassword)]
    public async Task Password_role_logs_in_with_its_password(string user, string password)
    {
        await using var connection = new NpgsqlConnection(_server.ConnectionString(user, password));
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand("SELECT current_user", connection);

        Assert.Equal(user, await command.ExecuteScalarAsync());
    }

    [Theory]
    [InlineData(PostgresServer.Md5User)]
    [InlineData(PostgresServer.ScramUser)]
    [InlineData(PostgresServer.ClearUser)]
    public async Task Password_role_is_refused_with_a_wrong_password(string user)
    {
        await using var connection = new NpgsqlConnection(_server.ConnectionString(user, "wrong"));

        var error = await Assert.ThrowsAnyAsync<PostgresException>(() => connection.OpenAsync());

        Assert.Equal(PostgresErrorCodes.InvalidPassword, error.SqlState); // 28P01
    }

    [Theory]
    [InlineData(PostgresServer.Md5User, "md5")]
    [InlineData(PostgresServer.ScramUser, "SCRAM-SHA-256$")]
    public async Task Passwords_are_stored_in_the_format_their_auth_method_needs(string user, string prefix)
    {
        string? stored = await _server.ScalarAsync<string>($"SELECT rolpassword FROM pg_authid WHERE rolname = '{user}'");

        Assert.NotNull(stored);
        Assert.StartsWith(prefix, stored, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(PostgresServer.TrustUser)]
    [InlineData(PostgresServer.OtherUser)]
    public async Task Trusted_role_logs_in_without_a_password_and_may_create_tables(string user)
    {
        string table = $"fixture_probe_{user}";
        await using var connection = new NpgsqlConnection(_server.ConnectionString(user));
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand($"CREATE TABLE {table} (i int); DROP TABLE {table}", connection);

        await command.ExecuteNonQueryAsync();
    }

    [Fact]
    public async Task Helpers_run_statements_and_read_scalars()
    {
        await _server.ExecuteNonQueryAsync("CREATE TABLE fixture_helpers (i int)");
        try
        {
            Assert.Equal(2, await _server.ExecuteNonQueryAsync("INSERT INTO fixture_helpers VALUES (1), (2)"));
            Assert.Equal(2L, await _server.ScalarAsync<long>("SELECT count(*) FROM fixture_helpers"));
            Assert.Null(await _server.ScalarAsync<string>("SELECT NULL::text"));
            Assert.Null(await _server.ScalarAsync<string>("SELECT 'x' WHERE false"));
        }
        finally
        {
            await _server.ExecuteNonQueryAsync("DROP TABLE fixture_helpers");
        }
    }

    [Fact]
    public async Task Unix_socket_in_the_socket_dir_accepts_connections()
    {
        var builder = new NpgsqlConnectionStringBuilder(_server.ConnectionString()) { Host = _server.SocketDir };
        await using var connection = new NpgsqlConnection(builder.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand("SELECT 1", connection);

        Assert.Equal(1, await command.ExecuteScalarAsync());
        Assert.True(File.Exists(Path.Combine(_server.SocketDir, $".s.PGSQL.{_server.Port}")));
    }

    [Fact]
    public async Task Psql_over_tcp_prints_1()
    {
        string psql = ProcessRunner.FindOnPath("psql") ?? _server.ToolPath("psql");
        var env = new Dictionary<string, string> { ["PGPASSWORD"] = string.Empty, ["PGCONNECT_TIMEOUT"] = "10" };

        var (exitCode, stdout, stderr) = await ProcessRunner.RunAsync(
            psql,
            ["-X", "-h", _server.Host, "-p", _server.Port.ToString(System.Globalization.CultureInfo.InvariantCulture),
             "-U", PostgresServer.Superuser, "-d", PostgresServer.Database, "-Atc", "select 1"],
            TimeSpan.FromSeconds(30),
            env);

        Assert.True(exitCode == 0, $"psql exited with {exitCode}: {stderr}");
        Assert.Equal("1", stdout.Trim());
    }
}

/// <summary>Lifecycle tests that need a server of their own, since they stop it.</summary>
public sealed class PostgresServerLifecycleTests
{
    [Fact]
    public async Task Stop_and_StartAgain_keep_port_and_data_and_Dispose_deletes_the_folder()
    {
        var server = PostgresServer.Start();
        string folder = server.SocketDir;
        try
        {
            int port = server.Port;
            await server.ExecuteNonQueryAsync("CREATE TABLE survives_restart (i int); INSERT INTO survives_restart VALUES (7)");

            server.Stop();
            await Assert.ThrowsAnyAsync<NpgsqlException>(() => server.ScalarAsync<int>("SELECT 1"));

            server.StartAgain();
            Assert.Equal(port, server.Port);
            Assert.Equal(7, await server.ScalarAsync<int>("SELECT i FROM survives_restart"));
        }
        finally
        {
            server.Dispose();
        }

        Assert.False(Directory.Exists(folder));
    }

    [Fact]
    public async Task ProcessRunner_kills_a_process_that_outlives_its_timeout()
    {
        string sleep = ProcessRunner.FindOnPath("sleep") ?? throw new InvalidOperationException("no sleep on PATH");

        await Assert.ThrowsAsync<TimeoutException>(
            () => ProcessRunner.RunAsync(sleep, ["30"], TimeSpan.FromMilliseconds(300)));
    }

    [Fact]
    public async Task ProcessRunner_passes_stdin_and_environment()
    {
        string sh = ProcessRunner.FindOnPath("sh") ?? throw new InvalidOperationException("no sh on PATH");
        var env = new Dictionary<string, string> { ["FPP_PROBE"] = "set", ["HOME"] = string.Empty };

        var (exitCode, stdout, _) = await ProcessRunner.RunAsync(
            sh, ["-c", "read line; echo \"$line $FPP_PROBE ${HOME-unset}\"; exit 3"], TimeSpan.FromSeconds(10), env, "hello\n");

        Assert.Equal(3, exitCode);
        Assert.Equal("hello set unset", stdout.Trim());
    }
}
