// JSON states in and out through pgjdbc (Debian's libpostgresql-jdbc-java),
// as a Java application would: es_append_json with the JSON as a string
// parameter cast to jsonb, es_jsonb to read it back, a conflict reported as
// SQLSTATE 23505 (a PSQLException).  Prints TAP lines; run by
// test/scripts/test.sh with ES_TEST_JDBC_URL set.
import java.sql.*;
import java.util.UUID;

public class JsonTest {
    static int n = 0, failed = 0;

    static void check(boolean ok, String what) {
        n++;
        if (!ok) failed++;
        System.out.println((ok ? "ok " : "not ok ") + n + " - " + what);
    }

    public static void main(String[] args) throws Exception {
        String url = System.getenv("ES_TEST_JDBC_URL");
        String app = "jdbc_" + UUID.randomUUID().toString().substring(0, 8);
        String tricky = "{\"name\": \"Zo\u00e9 \\\\ \\\"the\\\" \\n dog \ud83d\udc15\", \"path\": \"C:\\\\dogs\\\\zoe\"}";
        try (Connection c = DriverManager.getConnection(url)) {
            c.createStatement().execute("CREATE EXTENSION IF NOT EXISTS eventsourcing");
            try (PreparedStatement p = c.prepareStatement("SELECT es_create_application(?)")) {
                p.setString(1, app); p.execute();
            }
            UUID dog = UUID.randomUUID();
            try (PreparedStatement p = c.prepareStatement("SELECT es_append_json(?, ?, 1, ?, ?::jsonb)")) {
                p.setString(1, app); p.setObject(2, dog); p.setString(3, "Dog.Registered"); p.setString(4, tricky);
                ResultSet r = p.executeQuery(); r.next();
                check(r.getLong(1) >= 1, "es_append_json takes a JSON string parameter");
            }
            try (PreparedStatement p = c.prepareStatement(
                    "SELECT es_jsonb(state) = ?::jsonb, es_jsonb(state) ->> 'name' FROM es_events(?, ?)")) {
                p.setString(1, tricky); p.setString(2, app); p.setObject(3, dog);
                ResultSet r = p.executeQuery(); r.next();
                check(r.getBoolean(1), "the JSON comes back equal (es_jsonb)");
                check(("Zo\u00e9 \\ \"the\" \n dog \ud83d\udc15").equals(r.getString(2)),
                      "non-ASCII, backslashes, quotes and newlines intact");
            }
            try (PreparedStatement p = c.prepareStatement("SELECT es_append_json(?, ?, 1, ?, ?::jsonb)")) {
                p.setString(1, app); p.setObject(2, dog); p.setString(3, "Dog.Registered"); p.setString(4, "{}");
                p.executeQuery();
                check(false, "a conflict is refused");
            } catch (SQLException e) {
                check("23505".equals(e.getSQLState()), "a conflict is a PSQLException with SQLState 23505 (" + e.getClass().getSimpleName() + ")");
            }
        }
        System.out.println("1.." + n);
        System.exit(failed == 0 ? 0 : 1);
    }
}
