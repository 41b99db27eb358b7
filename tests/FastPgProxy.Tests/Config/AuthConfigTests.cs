using FastPgProxy.Admin;
using FastPgProxy.Config;
using Xunit;

namespace FastPgProxy.Tests.Config;

/// <summary>auth_user, auth_query, auth_dbname and the [databases] auth_user= option as the config file gives them.</summary>
public sealed class AuthConfigTests
{
    [Fact]
    public void Auth_user_auth_query_and_auth_dbname_are_read()
    {
        ProxyOptions o = ConfigLoader.Parse(
            "[pgbouncer]\nauth_type = md5\nauth_user = pgbouncer\nauth_query = SELECT usename, passwd FROM pg_shadow WHERE usename=$1\nauth_dbname = authdb\n"
            + "[databases]\nauthdb = host=10.0.0.1 dbname=postgres\napp = host=10.0.0.1 auth_user=app_lookup\n",
            "x.ini");

        Assert.Equal(("pgbouncer", "SELECT usename, passwd FROM pg_shadow WHERE usename=$1", "authdb"), (o.AuthUser, o.AuthQuery, o.AuthDbname));
        Assert.Equal("app_lookup", o.FindDatabase("app")!.AuthUser);
        Assert.Null(o.FindDatabase("authdb")!.AuthUser);
        Assert.Empty(o.Warnings);
    }

    [Fact]
    public void The_defaults_are_PgBouncers()
    {
        ProxyOptions o = ConfigLoader.Parse("[pgbouncer]\nauth_type = trust\n[databases]\n", "x.ini");

        Assert.Null(o.AuthUser);
        Assert.Null(o.AuthDbname);
        Assert.Equal(
            "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin",
            o.AuthQuery);
    }

    [Fact]
    public void A_password_method_needs_auth_file_unless_an_auth_user_looks_users_up()
    {
        Assert.Equal("pgbouncer", ConfigLoader.Parse("[pgbouncer]\nauth_type = scram-sha-256\nauth_user = pgbouncer\n[databases]\n", "x.ini").AuthUser);
        Assert.Equal("lookup", ConfigLoader.Parse("[pgbouncer]\nauth_type = md5\n[databases]\napp = auth_user=lookup\n", "x.ini").FindDatabase("app")!.AuthUser);

        var e = Assert.Throws<ConfigException>(() => ConfigLoader.Parse("[pgbouncer]\nauth_type = md5\n[databases]\n", "x.ini"));
        Assert.Contains("auth_type md5 needs auth_file", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void An_empty_auth_query_is_an_error_naming_its_line()
    {
        var e = Assert.Throws<ConfigException>(() => ConfigLoader.Parse("[pgbouncer]\nauth_type = trust\nauth_query =\n[databases]\n", "x.ini"));
        Assert.Equal("x.ini:3: auth_query: must not be empty", e.Message);
    }

    [Fact]
    public void Show_config_lists_the_keys_and_reload_applies_them()
    {
        ProxyOptions running = ConfigLoader.Parse("[pgbouncer]\nauth_type = trust\n[databases]\n", "x.ini");
        ProxyOptions reloaded = ConfigLoader.Parse("[pgbouncer]\nauth_type = trust\nauth_user = lookup\nauth_dbname = authdb\nauth_query = SELECT 1, 2\n[databases]\n", "x.ini");
        foreach (string key in new[] { "auth_user", "auth_query", "auth_dbname" })
        {
            ConfigSetting setting = Assert.Single(ConfigSetting.All, s => s.Key == key);
            Assert.True(setting.Changeable);
            setting.Apply!(running, reloaded);
        }

        Assert.Equal(("lookup", "authdb", "SELECT 1, 2"), (running.AuthUser, running.AuthDbname, running.AuthQuery));
    }

    [Fact]
    public void Auth_type_hba_reads_auth_hba_file_and_needs_it()
    {
        ProxyOptions o = ConfigLoader.Parse("[pgbouncer]\nauth_type = hba\nauth_hba_file = /etc/fpp/hba.conf\n[databases]\n", "x.ini");
        Assert.Equal((AuthType.Hba, "/etc/fpp/hba.conf"), (o.AuthType, o.AuthHbaFile));
        Assert.Equal("hba", Assert.Single(ConfigSetting.All, s => s.Key == "auth_type").Get(o));
        Assert.Equal("/etc/fpp/hba.conf", Assert.Single(ConfigSetting.All, s => s.Key == "auth_hba_file").Get(o));
        Assert.Empty(o.Warnings);

        var e = Assert.Throws<ConfigException>(() => ConfigLoader.Parse("[pgbouncer]\nauth_type = hba\n[databases]\n", "x.ini"));
        Assert.Contains("auth_type hba needs auth_hba_file", e.Message, StringComparison.Ordinal);
    }
}
