// Grows a topic to N partitions with Kafka's own Admin client: rskafka has no
// CreatePartitions request. Run with the broker's jars:
//   java -cp '<state>/kafka-<version>/libs/*' AddPartitions.java BROKERS TOPIC N
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewPartitions;

public class AddPartitions {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", args[0]);
        try (Admin admin = Admin.create(props)) {
            admin.createPartitions(Map.of(args[1], NewPartitions.increaseTo(Integer.parseInt(args[2]))))
                .all()
                .get();
        }
    }
}
