using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace FastPgProxy.Tests.Infrastructure;

/// <summary>
/// Runs external programs (initdb, pg_ctl, psql, pgbench) with captured output and a hard
/// time limit: no wait in the test suite may be unbounded.
/// </summary>
public static class ProcessRunner
{
    /// <summary>How long a killed process tree gets to go away before we stop waiting for it.</summary>
    private static readonly TimeSpan KillGrace = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Runs <paramref name="file"/> with <paramref name="args"/> (passed as separate arguments, no
    /// shell quoting) and returns its exit code and everything it wrote to stdout and stderr.
    /// </summary>
    /// <param name="file">Program to run: a path, or a name looked up on PATH.</param>
    /// <param name="args">Arguments, one element per argument.</param>
    /// <param name="timeout">
    /// Limit for the whole run, including reading the output to its end. When it passes, the
    /// process and all its descendants are killed and <see cref="TimeoutException"/> is thrown.
    /// </param>
    /// <param name="env">
    /// Environment changes on top of this process's environment. An empty value removes the
    /// variable (use it to unset <c>PGPASSWORD</c> and the like).
    /// </param>
    /// <param name="stdin">
    /// Text written to the program's standard input, which is then closed. When null the program
    /// gets an empty, already closed standard input, so it can never wait for a keyboard.
    /// </param>
    /// <param name="workingDirectory">Working directory; null keeps the current one.</param>
    /// <exception cref="TimeoutException">The program did not finish within <paramref name="timeout"/>.</exception>
    public static async Task<(int ExitCode, string StdOut, string StdErr)> RunAsync(
        string file,
        IEnumerable<string> args,
        TimeSpan timeout,
        IDictionary<string, string>? env = null,
        string? stdin = null,
        string? workingDirectory = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(file);
        ArgumentNullException.ThrowIfNull(args);

        var startInfo = new ProcessStartInfo(file)
        {
            UseShellExecute = false,
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            StandardOutputEncoding = Encoding.UTF8,
            StandardErrorEncoding = Encoding.UTF8,
        };
        foreach (string arg in args)
        {
            startInfo.ArgumentList.Add(arg);
        }

        if (workingDirectory is not null)
        {
            startInfo.WorkingDirectory = workingDirectory;
        }

        if (env is not null)
        {
            foreach (KeyValuePair<string, string> pair in env)
            {
                if (string.IsNullOrEmpty(pair.Value))
                {
                    startInfo.Environment.Remove(pair.Key);
                }
                else
                {
                    startInfo.Environment[pair.Key] = pair.Value;
                }
            }
        }

        string commandLine = Describe(file, startInfo.ArgumentList);
        using var process = new Process { StartInfo = startInfo };
        using var deadline = new CancellationTokenSource(timeout);
        process.Start();

        // Both pipes are drained from the start: a child that fills one pipe while we wait on
        // the other would otherwise block forever.
        Task<string> stdoutTask = process.StandardOutput.ReadToEndAsync(deadline.Token);
        Task<string> stderrTask = process.StandardError.ReadToEndAsync(deadline.Token);

        try
        {
            try
            {
                if (stdin is not null)
                {
                    await process.StandardInput.WriteAsync(stdin.AsMemory(), deadline.Token).ConfigureAwait(false);
                }
            }
            catch (IOException)
            {
                // The program exited (or closed its stdin) without reading everything; its exit
                // code and output tell the caller what happened.
            }
            finally
            {
                CloseQuietly(process.StandardInput);
            }

            await process.WaitForExitAsync(deadline.Token).ConfigureAwait(false);
            string stdout = await stdoutTask.ConfigureAwait(false);
            string stderr = await stderrTask.ConfigureAwait(false);
            return (process.ExitCode, stdout, stderr);
        }
        catch (OperationCanceledException) when (deadline.IsCancellationRequested)
        {
            bool exited = process.HasExited;
            KillTree(process);
            await ObserveQuietly(stdoutTask, stderrTask).ConfigureAwait(false);
            throw new TimeoutException(exited
                ? $"'{commandLine}' exited, but its output was still open after {timeout.TotalSeconds:0.#} s (a child process kept it); the process tree was killed."
                : $"'{commandLine}' did not finish within {timeout.TotalSeconds:0.#} s; the process tree was killed.");
        }
    }

    /// <summary>
    /// Synchronous form of <see cref="RunAsync"/> for fixture code that cannot be async
    /// (constructors, <see cref="IDisposable.Dispose"/>). Safe to block on: nothing inside
    /// resumes on the caller's synchronization context.
    /// </summary>
    /// <param name="file">Program to run.</param>
    /// <param name="args">Arguments, one element per argument.</param>
    /// <param name="timeout">Limit for the whole run.</param>
    /// <param name="env">Environment changes; an empty value removes the variable.</param>
    /// <param name="stdin">Text for standard input, or null for none.</param>
    /// <param name="workingDirectory">Working directory; null keeps the current one.</param>
    /// <returns>The exit code and the captured output.</returns>
    public static (int ExitCode, string StdOut, string StdErr) Run(
        string file,
        IEnumerable<string> args,
        TimeSpan timeout,
        IDictionary<string, string>? env = null,
        string? stdin = null,
        string? workingDirectory = null)
        => RunAsync(file, args, timeout, env, stdin, workingDirectory).GetAwaiter().GetResult();

    /// <summary>
    /// Finds an executable the way a shell would: returns <paramref name="exe"/> itself when it
    /// contains a slash and is executable, otherwise the first executable file of that name in
    /// a PATH directory, or null.
    /// </summary>
    /// <param name="exe">Program name, such as <c>psql</c>.</param>
    /// <returns>Full path of the executable, or null when none is found.</returns>
    public static string? FindOnPath(string exe)
    {
        ArgumentException.ThrowIfNullOrEmpty(exe);
        if (exe.Contains('/', StringComparison.Ordinal))
        {
            return IsExecutableFile(exe) ? Path.GetFullPath(exe) : null;
        }

        string path = Environment.GetEnvironmentVariable("PATH") ?? string.Empty;
        foreach (string dir in path.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
        {
            string candidate = Path.Combine(dir, exe);
            if (IsExecutableFile(candidate))
            {
                return Path.GetFullPath(candidate);
            }
        }

        return null;
    }

    /// <summary>True when <paramref name="path"/> is a regular file with an execute bit set.</summary>
    internal static bool IsExecutableFile(string path)
    {
        if (!File.Exists(path))
        {
            return false;
        }

        const UnixFileMode anyExecute = UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute;
        return OperatingSystem.IsWindows() || (File.GetUnixFileMode(path) & anyExecute) != 0;
    }

    private static void KillTree(Process process)
    {
        try
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit(KillGrace);
        }
        catch (InvalidOperationException)
        {
            // Already gone.
        }
        catch (System.ComponentModel.Win32Exception)
        {
            // Exited between the check and the kill.
        }
    }

    private static void CloseQuietly(StreamWriter writer)
    {
        try
        {
            writer.Close();
        }
        catch (IOException)
        {
            // Broken pipe: the child exited first.
        }
    }

    private static async Task ObserveQuietly(params Task[] tasks)
    {
        try
        {
            await Task.WhenAll(tasks).WaitAsync(KillGrace).ConfigureAwait(false);
        }
        catch (Exception)
        {
            // Only observing them so that they do not surface as unobserved exceptions.
        }
    }

    private static string Describe(string file, IEnumerable<string> args)
    {
        var text = new StringBuilder(file);
        foreach (string arg in args)
        {
            text.Append(' ');
            bool quote = arg.Length == 0 || arg.AsSpan().IndexOfAny(" \t\"'") >= 0;
            text.Append(quote ? "\"" + arg + "\"" : arg);
        }

        return text.ToString();
    }
}
