using FastPgProxy.Admin;
using FastPgProxy.Config;
using Xunit;

namespace FastPgProxy.Tests.Config;

/// <summary>
/// A pgbouncer.ini that sets every one of PgBouncer 1.25's settings (its src/main.c table), each to a
/// value PgBouncer takes: nothing is refused, every key FastPgProxy acts on is in SHOW CONFIG, and every
/// other key is named in exactly one warning.
/// </summary>
public class PgBouncerKeysTests
{
    // PgBouncer 1.25's settings, each with a valid value (its default where that is not empty).
    private static readonly (string Key, string Value)[] s_everyKey =
    [
        ("admin_users", "admin"), ("application_name_add_host", "1"), ("auth_dbname", "postgres"), ("auth_file", "/etc/pgbouncer/userlist.txt"),
        ("auth_hba_file", "/etc/pgbouncer/hba.conf"), ("auth_ident_file", "/etc/pgbouncer/ident.map"), ("auth_ldap_options", ""),
        ("auth_query", "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"), ("auth_type", "md5"), ("auth_user", "pgbouncer"),
        ("autodb_idle_timeout", "3600"), ("cancel_wait_timeout", "10"), ("client_idle_timeout", "0"), ("client_login_timeout", "60"),
        ("client_tls13_ciphers", ""), ("client_tls_ca_file", ""), ("client_tls_cert_file", ""), ("client_tls_ciphers", "default"),
        ("client_tls_dheparams", "auto"), ("client_tls_ecdhcurve", "auto"), ("client_tls_key_file", ""), ("client_tls_protocols", "secure"),
        ("client_tls_sslmode", "disable"), ("conffile", "/etc/pgbouncer/pgbouncer.ini"), ("default_pool_size", "20"), ("disable_pqexec", "0"),
        ("dns_max_ttl", "15"), ("dns_nxdomain_ttl", "15"), ("dns_zone_check_period", "0"), ("idle_transaction_timeout", "0"),
        ("ignore_startup_parameters", "extra_float_digits"), ("job_name", "pgbouncer"), ("listen_addr", "127.0.0.1"), ("listen_backlog", "128"),
        ("listen_port", "6432"), ("log_connections", "1"), ("log_disconnections", "1"), ("log_pooler_errors", "1"), ("log_stats", "1"),
        ("logfile", "/var/log/pgbouncer/pgbouncer.log"), ("max_client_conn", "100"), ("max_db_client_connections", "0"), ("max_db_connections", "0"),
        ("max_packet_size", "2147483647"), ("max_prepared_statements", "200"), ("max_user_client_connections", "0"), ("max_user_connections", "0"),
        ("min_pool_size", "0"), ("peer_id", "0"), ("pidfile", "/var/run/pgbouncer/pgbouncer.pid"), ("pkt_buf", "4096"), ("pool_mode", "session"),
        ("query_timeout", "0"), ("query_wait_notify", "5"), ("query_wait_timeout", "120"), ("reserve_pool_size", "0"), ("reserve_pool_timeout", "5"),
        ("resolv_conf", ""), ("sbuf_loopcnt", "5"), ("scram_iterations", "4096"), ("server_check_delay", "30"), ("server_check_query", "select 1"),
        ("server_connect_timeout", "15"), ("server_fast_close", "0"), ("server_idle_timeout", "600"), ("server_lifetime", "3600"),
        ("server_login_retry", "15"), ("server_reset_query", "DISCARD ALL"), ("server_reset_query_always", "0"), ("server_round_robin", "0"),
        ("server_tls13_ciphers", ""), ("server_tls_ca_file", ""), ("server_tls_cert_file", ""), ("server_tls_ciphers", "default"),
        ("server_tls_key_file", ""), ("server_tls_protocols", "secure"), ("server_tls_sslmode", "prefer"), ("service_name", "pgbouncer"),
        ("so_reuseport", "0"), ("stats_period", "60"), ("stats_users", "stats"), ("suspend_timeout", "10"), ("syslog", "0"),
        ("syslog_facility", "daemon"), ("syslog_ident", "pgbouncer"), ("tcp_defer_accept", "1"), ("tcp_keepalive", "1"), ("tcp_keepcnt", "0"),
        ("tcp_keepidle", "0"), ("tcp_keepintvl", "0"), ("tcp_socket_buffer", "0"), ("tcp_user_timeout", "0"), ("track_extra_parameters", "IntervalStyle"),
        ("transaction_timeout", "0"), ("unix_socket_dir", "/tmp"), ("unix_socket_group", ""), ("unix_socket_mode", "0777"), ("user", "postgres"),
        ("verbose", "0"),
    ];

    [Fact]
    public void Every_PgBouncer_setting_is_supported_or_warned_about_and_none_is_refused()
    {
        Assert.Equal(99, s_everyKey.Length);
        string path = Path.Combine(Directory.CreateTempSubdirectory("fpp-keys-").FullName, "pgbouncer.ini");
        File.WriteAllText(path, "[databases]\n* = host=127.0.0.1\n[pgbouncer]\n" + string.Join('\n', s_everyKey.Select(k => $"{k.Key} = {k.Value}")) + "\n");
        try
        {
            List<ConfigReviewEntry> review = ConfigLoader.Review(path).Where(e => e.Section == "pgbouncer").ToList();
            Assert.Equal(s_everyKey.Select(k => k.Key), review.Select(e => e.Key));
            Assert.Empty(review.Where(e => e.Status == ConfigKeyStatus.Refused).Select(e => e.Message));

            HashSet<string> shown = ConfigSetting.All.Select(s => s.Key).ToHashSet();
            Assert.Empty(review.Where(e => e.Status == ConfigKeyStatus.Used && !shown.Contains(e.Key)).Select(e => e.Key));
            Assert.Empty(review.Where(e => e.Status == ConfigKeyStatus.Ignored && shown.Contains(e.Key)).Select(e => e.Key));

            ProxyOptions options = ConfigLoader.Load(path);
            List<string> ignored = review.Where(e => e.Status == ConfigKeyStatus.Ignored).Select(e => e.Key).ToList();
            Assert.Equal(ignored.Count, options.Warnings.Count);
            Assert.All(ignored, key => Assert.Single(options.Warnings, w => w.Contains($": {key}: ", StringComparison.Ordinal)));
        }
        finally
        {
            Directory.Delete(Path.GetDirectoryName(path)!, recursive: true);
        }
    }
}
