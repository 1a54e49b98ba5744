// pgJDBC with its default settings against PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE (direct or
// through tenantgate). PEER_TENANT set: the session is that tenant's and must see only its rows of
// peer_items; PEER_OPTIONS: startup options (direct runs set tenantgate.tenant for RLS this way).
// Prints one line per check: "ok NAME" or "FAIL NAME: reason". With the argument "connections N":
// only N connections with default settings held open at once, each running a query (pooling).
// Compiled at run time by the runner:
//   javac -cp /usr/share/java/postgresql.jar JdbcClient.java && java -cp .:postgresql.jar JdbcClient
import java.io.StringWriter;
import java.sql.*;
import java.util.*;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.copy.CopyManager;
import org.postgresql.util.PSQLException;
import org.postgresql.util.ServerErrorMessage;

public class JdbcClient {
    interface Check { void run(Connection c) throws Exception; }

    static final String TENANT = System.getenv("PEER_TENANT");
    static int failures = 0;

    static Connection connect() throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", System.getenv("PGUSER"));
        p.setProperty("password", System.getenv("PGPASSWORD"));
        p.setProperty("sslmode", "disable");
        String options = System.getenv("PEER_OPTIONS");
        if (options != null && !options.isEmpty()) p.setProperty("options", options);
        String url = "jdbc:postgresql://" + System.getenv("PGHOST") + ":" + System.getenv("PGPORT") + "/"
                + System.getenv("PGDATABASE");
        return DriverManager.getConnection(url, p);
    }

    static void expect(boolean cond, String why) {
        if (!cond) throw new AssertionError(why);
    }

    static void check(Connection c, String name, Check body) {
        try {
            body.run(c);
            System.out.println("ok " + name);
        } catch (Throwable e) {
            failures++;
            String msg = String.valueOf(e.getMessage()).replace('\n', ' ');
            System.out.println("FAIL " + name + ": " + e.getClass().getSimpleName() + ": " + msg);
        } finally {
            try { if (!c.getAutoCommit()) c.rollback(); c.setAutoCommit(true); } catch (SQLException ignored) { }
        }
    }

    // A tenant's rows get their tenant from the session; a trusted user names it (acme's rows).
    static final String INSERT = TENANT != null ? "INSERT INTO peer_items (name) VALUES (?)"
            : "INSERT INTO peer_items (tenant_id, name) VALUES ('acme', ?)";

    static void insert(Connection c, String name) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(INSERT)) {
            ps.setString(1, name);
            expect(ps.executeUpdate() == 1, "insert " + name);
        }
    }

    static List<String> tenantsSeen(Connection c) throws SQLException {
        List<String> out = new ArrayList<>();
        try (ResultSet rs = c.createStatement().executeQuery("SELECT DISTINCT tenant_id FROM peer_items ORDER BY 1")) {
            while (rs.next()) out.add(rs.getString(1));
        }
        return out;
    }

    // N connections open together: pgJDBC's connect-time SETs must not pin each to its own backend.
    static void connections(int n) {
        List<Connection> open = new ArrayList<>();
        try {
            for (int i = 0; i < n; i++) {
                Connection c = connect();
                open.add(c);
                try (ResultSet rs = c.createStatement().executeQuery("SELECT count(*) FROM peer_items")) { rs.next(); }
            }
            for (Connection c : open) {
                try (ResultSet rs = c.createStatement().executeQuery("SELECT 1")) { rs.next(); }
            }
            System.out.println("ok connections");
        } catch (SQLException e) {
            System.out.println("FAIL connections: " + e.getSQLState() + " at connection " + (open.size() + 1) + ": "
                    + e.getMessage().replace('\n', ' '));
            failures++;
        }
        for (Connection c : open) { try { c.close(); } catch (SQLException ignored) { } }
    }

    public static void main(String[] args) throws Exception {
        if (args.length == 2 && args[0].equals("connections")) {
            connections(Integer.parseInt(args[1]));
            System.exit(failures == 0 ? 0 : 2);
        }
        Connection c;
        try {
            c = connect();
            System.out.println("ok connect");
        } catch (SQLException e) {
            System.out.println("FAIL connect: " + e.getSQLState() + " " + e.getMessage().replace('\n', ' '));
            System.exit(1);
            return;
        }
        check(c, "metadata", x -> {
            DatabaseMetaData md = x.getMetaData();
            expect(md.getDatabaseProductName().equals("PostgreSQL"), md.getDatabaseProductName());
            boolean found = false;
            try (ResultSet rs = md.getTables(null, "public", "peer_items", new String[] {"TABLE"})) {
                found = rs.next();
            }
            expect(found, "getTables does not list peer_items");
            Set<String> cols = new HashSet<>();
            try (ResultSet rs = md.getColumns(null, "public", "peer_items", null)) {
                while (rs.next()) cols.add(rs.getString("COLUMN_NAME"));
            }
            expect(cols.containsAll(List.of("id", "name")), "getColumns: " + cols);
            try (ResultSet rs = md.getPrimaryKeys(null, "public", "peer_items")) {
                expect(rs.next(), "getPrimaryKeys is empty");
            }
        });
        check(c, "prepared", x -> {
            // prepareThreshold 5 (the default): the sixth execution uses a named server statement.
            try (PreparedStatement ps = x.prepareStatement("SELECT ?::int + 1")) {
                for (int i = 0; i < 8; i++) {
                    ps.setInt(1, i);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        expect(rs.getInt(1) == i + 1, "wrong result at " + i);
                    }
                }
                expect(ps.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare(), "not server-prepared");
            }
        });
        check(c, "batch", x -> {
            x.setAutoCommit(false);
            try (PreparedStatement ps = x.prepareStatement(INSERT)) {
                for (int i = 0; i < 50; i++) { ps.setString(1, "batch " + i); ps.addBatch(); }
                int[] counts = ps.executeBatch();
                expect(counts.length == 50, "batch counts " + counts.length);
            }
            try (ResultSet rs = x.createStatement().executeQuery("SELECT count(*) FROM peer_items WHERE name LIKE 'batch %'")) {
                rs.next();
                expect(rs.getInt(1) == 50, "rows " + rs.getInt(1));
            }
        });
        check(c, "cursor", x -> {
            x.setAutoCommit(false);  // a fetch size only streams (portal + Execute with a row limit) in a transaction
            try (Statement st = x.createStatement()) {
                st.setFetchSize(10);
                int n = 0;
                try (ResultSet rs = st.executeQuery("SELECT g FROM generate_series(1, 95) g")) {
                    while (rs.next()) n++;
                }
                expect(n == 95, "rows " + n);
            }
        });
        check(c, "cancel", x -> {
            try (Statement st = x.createStatement()) {
                Thread t = new Thread(() -> {
                    try { Thread.sleep(500); st.cancel(); } catch (Exception ignored) { }
                });
                t.start();
                try {
                    st.execute("SELECT pg_sleep(10)");
                    throw new AssertionError("not cancelled");
                } catch (SQLException e) {
                    expect("57014".equals(e.getSQLState()), "SQLSTATE " + e.getSQLState());
                }
                t.join();
            }
            try (ResultSet rs = x.createStatement().executeQuery("SELECT 1")) {
                expect(rs.next(), "session unusable after cancel");
            }
        });
        check(c, "copy_to", x -> {
            CopyManager cm = x.unwrap(PGConnection.class).getCopyAPI();
            StringWriter w = new StringWriter();
            long n = cm.copyOut("COPY (SELECT name FROM peer_items ORDER BY id) TO STDOUT", w);
            expect(n >= 1 && w.toString().contains("\n"), "copied " + n);
            if (TENANT != null) expect(!w.toString().contains("GLOBEX"), "another tenant's rows: " + w);
        });
        check(c, "listen_notify", x -> {
            x.createStatement().execute("LISTEN peer_channel");
            x.createStatement().execute("NOTIFY peer_channel, 'hello'");
            PGNotification[] got = x.unwrap(PGConnection.class).getNotifications(2000);
            expect(got != null && got.length == 1, "notifications " + Arrays.toString(got));
            expect(got[0].getName().equals("peer_channel") && got[0].getParameter().equals("hello"),
                    got[0].getName() + "/" + got[0].getParameter());
            x.createStatement().execute("UNLISTEN peer_channel");
        });
        check(c, "backend_identity", x -> {
            int keyPid = x.unwrap(PGConnection.class).getBackendPID();
            try (ResultSet rs = x.createStatement().executeQuery("SELECT pg_backend_pid()")) {
                rs.next();
                expect(rs.getInt(1) == keyPid, "pg_backend_pid() " + rs.getInt(1) + " != BackendKeyData " + keyPid);
            }
        });
        check(c, "savepoint", x -> {
            x.setAutoCommit(false);
            insert(x, "sp before");
            Savepoint sp = x.setSavepoint("sp1");
            try {
                x.createStatement().execute("SELECT 1/0");
                throw new AssertionError("no division error");
            } catch (SQLException e) {
                expect("22012".equals(e.getSQLState()), e.getSQLState());
            }
            x.rollback(sp);
            insert(x, "sp after");
            try (ResultSet rs = x.createStatement().executeQuery("SELECT count(*) FROM peer_items WHERE name LIKE 'sp %'")) {
                rs.next();
                expect(rs.getInt(1) == 2, "rows " + rs.getInt(1));
            }
        });
        check(c, "error_fields", x -> {
            try {
                x.createStatement().execute("SELECT 1 FROM peer_items WHERE");
                throw new AssertionError("no syntax error");
            } catch (PSQLException e) {
                ServerErrorMessage m = e.getServerErrorMessage();
                expect("42601".equals(e.getSQLState()), "SQLSTATE " + e.getSQLState());
                expect(m != null && m.getPosition() == 31, "position " + (m == null ? "none" : m.getPosition()));
            }
            try {
                x.createStatement().execute("SELECT nosuchcolumn FROM peer_items");
                throw new AssertionError("no undefined column error");
            } catch (PSQLException e) {
                expect("42703".equals(e.getSQLState()), "SQLSTATE " + e.getSQLState());
                expect(e.getServerErrorMessage().getPosition() == 8, "position " + e.getServerErrorMessage().getPosition());
            }
        });
        check(c, "crud", x -> {
            List<String> before = tenantsSeen(x);
            if (TENANT != null) expect(before.equals(List.of(TENANT)), "tenant sees " + before);
            else expect(before.size() >= 2, "trusted sees " + before);
            x.setAutoCommit(false);
            insert(x, "jdbc");
            int updated = x.createStatement().executeUpdate("UPDATE peer_items SET name = name || '!' WHERE name = 'jdbc'");
            expect(updated == 1, "updated " + updated);
            int all = x.createStatement().executeUpdate("UPDATE peer_items SET name = name");
            int deleted = x.createStatement().executeUpdate("DELETE FROM peer_items WHERE name = 'jdbc!'");
            expect(deleted == 1, "deleted " + deleted);
            x.commit();
            try (ResultSet rs = x.createStatement().executeQuery("SELECT count(*) FROM peer_items")) {
                rs.next();
                expect(rs.getInt(1) == all - 1, "count " + rs.getInt(1) + " vs updated " + all);
            }
            expect(tenantsSeen(x).equals(before), "after: " + tenantsSeen(x));
        });
        c.close();
        System.exit(failures == 0 ? 0 : 2);
    }
}
