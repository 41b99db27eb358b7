using FastPgProxy.Config;
using Xunit;

namespace FastPgProxy.Tests.Config;

public class ConfigLoaderTests
{
    [Fact]
    public void Parses_a_pgbouncer_style_file()
    {
        const string text = """
            ; comment
            [databases]
            app = host=10.0.0.5 port=5433 dbname=appdb user=svc password='p a\'ss'
            * = host=/var/run/postgresql

            [pgbouncer]
            listen_addr = 0.0.0.0
            listen_port = 7432
            so_reuseport = 1
            auth_type = scram-sha-256
            auth_file = /etc/fpp/userlist.txt
            pool_mode = session
            max_client_conn = 500
            max_login_clients = 50
            loop_threads = 3
            socket_threads = 2
            client_login_timeout = 1500ms
            """;
        ProxyOptions o = ConfigLoader.Parse(text, "x.ini");
        Assert.Equal("0.0.0.0", o.ListenAddress);
        Assert.Equal(7432, o.ListenPort);
        Assert.True(o.SoReusePort);
        Assert.Equal(AuthType.ScramSha256, o.AuthType);
        Assert.Equal("/etc/fpp/userlist.txt", o.AuthFile);
        Assert.Equal(500, o.MaxClientConnections);
        Assert.Equal(50, o.MaxLoginClients);
        Assert.Equal(3, o.EffectiveLoopThreads);
        Assert.Equal(2, o.EffectiveSocketThreads);
        Assert.Equal(TimeSpan.FromMilliseconds(1500), o.ClientLoginTimeout);
        DatabaseOptions app = o.FindDatabase("app")!;
        Assert.Equal(("10.0.0.5", 5433, "appdb", "svc", "p a'ss"), (app.Host, app.Port, app.DatabaseName, app.User, app.Password));
        DatabaseOptions any = o.FindDatabase("other")!;
        Assert.Equal(("*", "/var/run/postgresql", 5432), (any.Name, any.Host, any.Port));
    }

    [Theory]
    [InlineData(0, 1, 1)]
    [InlineData(0, 2, 1)]
    [InlineData(0, 4, 2)]
    [InlineData(3, 4, 3)]
    public void Socket_threads_default_to_half_the_loops_and_at_least_one(int socketThreads, int loopThreads, int expected)
    {
        ProxyOptions o = ConfigLoader.Parse($"[fastpgproxy]\nauth_type = trust\nloop_threads = {loopThreads}\nsocket_threads = {socketThreads}\n[databases]\n* = host=h", "x.ini");
        Assert.Equal(expected, o.EffectiveSocketThreads);
    }

    [Theory]
    [InlineData("[fastpgproxy]\nlisten_port = 6432\nbogus_key = 1\n[databases]\n* = host=h", "x.ini:3: bogus_key: unknown setting")]
    [InlineData("[fastpgproxy]\nlisten_port = seventy\n[databases]\n* = host=h", "x.ini:2: listen_port: invalid value 'seventy'")]
    [InlineData("[fastpgproxy]\nauth_type = ldap\n", "x.ini:2: auth_type: invalid value 'ldap'")]
    [InlineData("[fastpgproxy]\nso_reuseport = 2\n", "x.ini:2: so_reuseport: invalid value '2'")]
    [InlineData("[databases]\napp = host=h colour=blue\n", "x.ini:2: app: unknown database parameter 'colour'")]
    [InlineData("[databases]\napp = host=h port=0\n", "x.ini:2: app: port: invalid value '0'")]
    [InlineData("[nope]\n", "x.ini:1: unknown section [nope]")]
    [InlineData("listen_port = 1\n", "x.ini:1: listen_port: key outside of a section")]
    [InlineData("[fastpgproxy]\nclient_login_timeout = soon\n", "x.ini:2: client_login_timeout: invalid duration 'soon'")]
    [InlineData("[fastpgproxy]\nauth_type = md5\n[databases]\n* = host=h\n", "x.ini: auth_type md5 needs auth_file")]
    public void Errors_name_file_line_and_key(string text, string expected)
    {
        var e = Assert.Throws<ConfigException>(() => ConfigLoader.Parse(text, "x.ini"));
        Assert.StartsWith(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Every_error_of_the_file_is_reported_in_one_run_a_line_each()
    {
        var e = Assert.Throws<ConfigException>(() => ConfigLoader.Parse(
            "[fastpgproxy]\nlisten_port = seventy\nbogus_key = 1\nauth_type = ldap\n[databases]\napp = host=h colour=blue\n", "x.ini"));

        Assert.Equal(
            ["x.ini:2: listen_port", "x.ini:3: bogus_key", "x.ini:4: auth_type", "x.ini:6: app"],
            e.Message.Split('\n').Select(m => string.Join(':', m.Split(':').Take(3))));
    }

    [Fact]
    public void Comments_may_follow_a_value_but_quoted_semicolons_and_hashes_are_kept()
    {
        ProxyOptions o = ConfigLoader.Parse(
            "[fastpgproxy] ; the proxy\nauth_type = trust # no passwords here\ndefault_pool_size = 20 ; was 10\n"
            + "  ; an indented comment\n[databases]\napp = host=h password='a;b #c' ; the app\n",
            "x.ini");

        Assert.Equal(20, o.DefaultPoolSize);
        Assert.Equal("a;b #c", o.Databases.Single().Password);
    }

    [Fact]
    public void Include_reads_another_file_in_place_relative_to_the_including_one()
    {
        string dir = Directory.CreateTempSubdirectory("fpp-include-").FullName;
        try
        {
            Directory.CreateDirectory(Path.Combine(dir, "conf.d"));
            File.WriteAllText(Path.Combine(dir, "main.ini"), "[fastpgproxy]\nauth_type = trust\n%include conf.d/pools.ini\n[databases]\n%include \"conf.d/dbs.ini\"\n");
            File.WriteAllText(Path.Combine(dir, "conf.d", "pools.ini"), "default_pool_size = 33\n");
            File.WriteAllText(Path.Combine(dir, "conf.d", "dbs.ini"), "app = host=h\n");

            ProxyOptions o = ConfigLoader.Load(Path.Combine(dir, "main.ini"));

            Assert.Equal(33, o.DefaultPoolSize);
            Assert.Equal("app", o.Databases.Single().Name);

            File.WriteAllText(Path.Combine(dir, "loop.ini"), "%include loop.ini\n%include missing.ini\n");
            var e = Assert.Throws<ConfigException>(() => ConfigLoader.Load(Path.Combine(dir, "loop.ini")));
            Assert.Contains("%include: more than 10 levels deep", e.Message, StringComparison.Ordinal);
            Assert.Contains($"loop.ini:2: %include: cannot read {Path.Combine(dir, "missing.ini")}", e.Message, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void An_empty_databases_section_starts_as_PgBouncer_does()
    {
        ProxyOptions o = ConfigLoader.Parse("[fastpgproxy]\nauth_type = trust\n[databases]\n", "x.ini");

        Assert.Empty(o.Databases);
    }

    [Fact]
    public void PgBouncer_settings_that_are_not_implemented_pass_with_one_warning_each()
    {
        ProxyOptions o = ConfigLoader.Parse(
            "[pgbouncer]\nauth_type = trust\ntcp_defer_accept = 1\nsbuf_loopcnt = 5\nunix_socket_dir = /var/run/postgresql\nauth_user =\n"
            + "logfile = /var/log/pgbouncer/pgbouncer.log\npidfile = /var/run/pgbouncer/pgbouncer.pid\n[databases]\n",
            "x.ini");

        Assert.Equal(
            ["x.ini:3: tcp_defer_accept", "x.ini:4: sbuf_loopcnt", "x.ini:5: unix_socket_dir", "x.ini:6: auth_user"],
            o.Warnings.Select(w => string.Join(':', w.Split(':').Take(3))));
        Assert.All(o.Warnings, w => Assert.EndsWith("PgBouncer's setting is not implemented by FastPgProxy; ignored", w, StringComparison.Ordinal));
        Assert.Equal(("/var/log/pgbouncer/pgbouncer.log", "/var/run/pgbouncer/pgbouncer.pid"), (o.LogFile, o.PidFile));
    }

    [Fact]
    public void TCP_keepalive_settings_read_as_PgBouncer_defines_them()
    {
        ProxyOptions defaults = ConfigLoader.Parse("[pgbouncer]\nauth_type = trust\n[databases]\n", "x.ini");
        ProxyOptions o = ConfigLoader.Parse(
            "[pgbouncer]\nauth_type = trust\ntcp_keepalive = 0\ntcp_keepidle = 30\ntcp_keepintvl = 5\ntcp_keepcnt = 3\ntcp_user_timeout = 9000\n[databases]\n", "x.ini");

        Assert.True(defaults.Keepalive.Enabled);
        Assert.Equal((false, 30, 5, 3, 9000), (o.Keepalive.Enabled, o.Keepalive.IdleSeconds, o.Keepalive.IntervalSeconds, o.Keepalive.Count, o.Keepalive.UserTimeoutMilliseconds));
        Assert.Empty(o.Warnings);
    }

    [Fact]
    public void A_PgBouncer_setting_whose_absence_clients_would_notice_is_an_error_that_says_so()
    {
        var e = Assert.Throws<ConfigException>(() => ConfigLoader.Parse("[pgbouncer]\nauth_type = trust\nauth_user = pgbouncer\n[databases]\n", "x.ini"));

        Assert.Equal("x.ini:3: auth_user: not supported: logins through auth_user and auth_query would all fail; list the users in auth_file", e.Message);
    }

    [Fact]
    public void Missing_file_is_an_error_naming_it()
    {
        var e = Assert.Throws<ConfigException>(() => ConfigLoader.Load("/nonexistent/fpp.ini"));
        Assert.StartsWith("/nonexistent/fpp.ini: cannot read config file", e.Message, StringComparison.Ordinal);
    }
}
