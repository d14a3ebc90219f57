/* monitor: socket-monitor events (monitor.h). */
#include "monitor.h"

#include <string.h>

#include <zmq.h>

bool monitor_next(void *monitor, uint16_t *event, uint32_t *value)
{
    zmq_msg_t part;
    zmq_msg_init(&part);
    if (zmq_msg_recv(&part, monitor, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&part);
        return false;
    }
    *event = 0;
    *value = 0;
    if (zmq_msg_size(&part) == 6) {   /* event number, value */
        memcpy(event, zmq_msg_data(&part), sizeof *event);
        memcpy(value, (const uint8_t *)zmq_msg_data(&part) + 2, sizeof *value);
    }
    while (zmq_msg_more(&part)) {   /* the endpoint address */
        zmq_msg_close(&part);
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, monitor, 0) < 0)
            break;
    }
    zmq_msg_close(&part);
    return true;
}
